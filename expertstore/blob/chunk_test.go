package blob

import "testing"

func TestCRC32CKnownValue(t *testing.T) {
	if got := CRC32C([]byte("123456789")); got != 0xe3069283 {
		t.Errorf("CRC32C(123456789) = %08x, want e3069283 (Castagnoli check value)", got)
	}
}

func TestChunkCRCs(t *testing.T) {
	const c = MinChunkSize
	tests := []struct {
		name       string
		size       int
		chunk      int
		wantChunks int
		wantLast   int // size of the last chunk
	}{
		{"empty", 0, c, 0, 0},
		{"one byte", 1, c, 1, 1},
		{"just short", c - 1, c, 1, c - 1},
		{"exact", c, c, 1, c},
		{"one over", c + 1, c, 2, 1},
		{"exact multiple", 3 * c, c, 3, c},
		{"short last", 3*c + 100, c, 4, 100},
		{"default size", DefaultChunkSize + 5, 0, 2, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := randomBytes(tt.size, 3)
			crcs := ChunkCRCs(b, tt.chunk)
			if len(crcs) != tt.wantChunks {
				t.Fatalf("%d chunks, want %d", len(crcs), tt.wantChunks)
			}
			size := tt.chunk
			if size <= 0 {
				size = DefaultChunkSize
			}
			for i, crc := range crcs {
				end := min(len(b), (i+1)*size)
				if i == len(crcs)-1 && end-i*size != tt.wantLast {
					t.Errorf("last chunk is %d bytes, want %d", end-i*size, tt.wantLast)
				}
				if want := CRC32C(b[i*size : end]); crc != want {
					t.Errorf("chunk %d: crc %08x, want %08x", i, crc, want)
				}
			}
		})
	}
}

func TestChunkCRCsBitFlip(t *testing.T) {
	const c = MinChunkSize
	b := randomBytes(4*c+10, 4)
	base := ChunkCRCs(b, c)
	for _, pos := range []int{0, c - 1, c, 2*c + 77, 4 * c, 4*c + 9} {
		b[pos] ^= 0x10
		got := ChunkCRCs(b, c)
		b[pos] ^= 0x10
		for i := range got {
			if changed, want := got[i] != base[i], i == pos/c; changed != want {
				t.Errorf("flip at %d: chunk %d changed = %v, want %v", pos, i, changed, want)
			}
		}
	}
}
