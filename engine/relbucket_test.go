package engine

import "testing"

// TestBucketTable: the clamped table lookup gives relativeBucket's bucket at every distance.
func TestBucketTable(t *testing.T) {
	for _, tt := range []struct{ buckets, maxDistance int }{{32, 128}, {32, 64}, {16, 32}, {8, 20}} {
		for _, bidirectional := range []bool{true, false} {
			tab, r := bucketTable(bidirectional, tt.buckets, tt.maxDistance)
			if tab == nil {
				t.Fatalf("%+v: no table", tt)
			}
			for rel := -5000; rel <= 5000; rel++ {
				if got, want := tab[min(max(rel, -r), r)+r], relativeBucket(rel, bidirectional, tt.buckets, tt.maxDistance); got != want {
					t.Fatalf("%+v bidirectional %v: relative %d: table %d, relativeBucket %d", tt, bidirectional, rel, got, want)
				}
			}
		}
	}
}
