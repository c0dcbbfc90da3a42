package blob

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/pregate/pregate/model"
)

// weights returns n little-endian elements of dtype dt ("BF16", "F16" or "F32") drawn like trained
// weights: N(0, std), rounded to nearest even.
func weights(dt string, n int, std float64, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	size := model.DType(dt).Size()
	b := make([]byte, n*size)
	for i := range n {
		f := float32(r.NormFloat64() * std)
		switch dt {
		case "BF16":
			binary.LittleEndian.PutUint16(b[2*i:], model.Float32ToBF16(f))
		case "F16":
			binary.LittleEndian.PutUint16(b[2*i:], model.Float32ToF16(f))
		case "F32":
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
		default:
			panic("test bug: dtype " + dt)
		}
	}
	return b
}

// randomBytes returns n uniformly random bytes.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func contains(err error, s string) bool { return err != nil && strings.Contains(err.Error(), s) }
