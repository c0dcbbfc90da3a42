package tokenizer

import (
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// The SentencePiece model file (tokenizer.model, spiece.model) is a serialized ModelProto
// (sentencepiece_model.proto). It is read here field by field with protowire rather than through
// generated code: only a dozen fields matter, and github.com/eliben/go-sentencepiece (which has the
// generated types) keeps them internal and accepts only BPE models without add_dummy_prefix (Gemma's
// shape), so neither Mistral's tokenizer.model (add_dummy_prefix) nor T5's spiece.model (Unigram)
// loads through it.

// pieceType is SentencePiece's ModelProto.SentencePiece.Type.
type pieceType int8

const (
	pieceNormal      pieceType = 1
	pieceUnknown     pieceType = 2
	pieceControl     pieceType = 3
	pieceUserDefined pieceType = 4
	pieceUnused      pieceType = 5
	pieceByte        pieceType = 6
)

// modelType is TrainerSpec.ModelType.
type modelType int

const (
	modelUnigram modelType = 1
	modelBPE     modelType = 2
	modelWord    modelType = 3
	modelChar    modelType = 4
)

// spModel is the part of a ModelProto that encoding and decoding use.
type spModel struct {
	pieces []string
	scores []float32
	types  []pieceType

	modelType               modelType
	byteFallback            bool
	unkID, bosID, eosID     int
	padID                   int
	treatWhitespaceAsSuffix bool
	unkSurface              string

	normalizerName         string
	charsmap               []byte
	addDummyPrefix         bool
	removeExtraWhitespaces bool
	escapeWhitespaces      bool
}

// parseSPModel decodes a serialized ModelProto. It checks the wire format and the few invariants the
// encoder relies on (ids in range, an unknown piece), and returns an error naming the problem.
func parseSPModel(b []byte) (*spModel, error) {
	m := &spModel{
		modelType: modelUnigram, unkID: 0, bosID: 1, eosID: 2, padID: -1, unkSurface: " \u2047 ",
		addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true,
	}
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && typ == protowire.BytesType:
			return m.addPiece(v)
		case num == 2 && typ == protowire.BytesType:
			return m.parseTrainerSpec(v)
		case num == 3 && typ == protowire.BytesType:
			return m.parseNormalizerSpec(v)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, m.validate()
}

func (m *spModel) addPiece(b []byte) error {
	var (
		piece string
		score float32
		typ   = pieceNormal
	)
	err := eachField(b, func(num protowire.Number, wt protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && wt == protowire.BytesType:
			piece = string(v)
		case num == 2 && wt == protowire.Fixed32Type:
			score = math.Float32frombits(uint32(x))
		case num == 3 && wt == protowire.VarintType:
			if x < uint64(pieceNormal) || x > uint64(pieceByte) {
				return fmt.Errorf("piece %d: unknown type %d", len(m.pieces), x)
			}
			typ = pieceType(x)
		}
		return nil
	})
	if err != nil {
		return err
	}
	m.pieces = append(m.pieces, piece)
	m.scores = append(m.scores, score)
	m.types = append(m.types, typ)
	return nil
}

func (m *spModel) parseTrainerSpec(b []byte) error {
	return eachField(b, func(num protowire.Number, wt protowire.Type, v []byte, x uint64) error {
		if wt == protowire.BytesType {
			if num == 44 {
				m.unkSurface = string(v)
			}
			return nil
		}
		if wt != protowire.VarintType {
			return nil
		}
		switch num {
		case 3:
			m.modelType = modelType(x)
		case 24:
			m.treatWhitespaceAsSuffix = x != 0
		case 35:
			m.byteFallback = x != 0
		case 40:
			m.unkID = int(int32(x))
		case 41:
			m.bosID = int(int32(x))
		case 42:
			m.eosID = int(int32(x))
		case 43:
			m.padID = int(int32(x))
		}
		return nil
	})
}

func (m *spModel) parseNormalizerSpec(b []byte) error {
	return eachField(b, func(num protowire.Number, wt protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && wt == protowire.BytesType:
			m.normalizerName = string(v)
		case num == 2 && wt == protowire.BytesType:
			m.charsmap = append([]byte(nil), v...)
		case num == 3 && wt == protowire.VarintType:
			m.addDummyPrefix = x != 0
		case num == 4 && wt == protowire.VarintType:
			m.removeExtraWhitespaces = x != 0
		case num == 5 && wt == protowire.VarintType:
			m.escapeWhitespaces = x != 0
		}
		return nil
	})
}

// validate checks what the encoder and decoder assume.
func (m *spModel) validate() error {
	n := len(m.pieces)
	if n == 0 {
		return fmt.Errorf("no pieces")
	}
	switch m.modelType {
	case modelUnigram, modelBPE:
	default:
		return unsupported("model type %d (Unigram, 1, and BPE, 2, are supported)", m.modelType)
	}
	if m.unkID < 0 || m.unkID >= n || m.types[m.unkID] != pieceUnknown {
		return fmt.Errorf("unk_id %d does not name an unknown piece", m.unkID)
	}
	for _, id := range []int{m.bosID, m.eosID, m.padID} {
		if id >= n || id < -1 {
			return fmt.Errorf("special id %d out of range [-1, %d)", id, n)
		}
	}
	if m.treatWhitespaceAsSuffix {
		return unsupported("treat_whitespace_as_suffix")
	}
	if m.byteFallback {
		seen := 0
		for i, t := range m.types {
			if t == pieceByte {
				if _, ok := parseBytePiece(m.pieces[i]); !ok {
					return fmt.Errorf("byte piece %d is %q, not <0xXX>", i, m.pieces[i])
				}
				seen++
			}
		}
		if seen != 256 {
			return fmt.Errorf("byte_fallback with %d byte pieces, want 256", seen)
		}
	}
	return nil
}

// eachField walks the fields of one protobuf message, calling fn with the field's number and wire
// type and its value: the bytes of a length-delimited field, or the integer of a varint or fixed one.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("bad protobuf tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		var (
			v []byte
			x uint64
		)
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var x32 uint32
			x32, n = protowire.ConsumeFixed32(b)
			x = uint64(x32)
		case protowire.Fixed64Type:
			x, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

// parseBytePiece reads a byte-fallback piece, "<0x41>".
func parseBytePiece(p string) (byte, bool) {
	if len(p) != 6 || p[:3] != "<0x" || p[5] != '>' {
		return 0, false
	}
	var v byte
	for _, c := range p[3:5] {
		v <<= 4
		switch {
		case c >= '0' && c <= '9':
			v |= byte(c - '0')
		case c >= 'A' && c <= 'F':
			v |= byte(c - 'A' + 10)
		case c >= 'a' && c <= 'f':
			v |= byte(c - 'a' + 10)
		default:
			return 0, false
		}
	}
	return v, true
}
