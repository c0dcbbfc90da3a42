//go:build amd64 && !noasm

package blob

// interleave2SSE interleaves n elements (a multiple of 16, > 0) of planes p0, p1 into dst; with
// rot each 16-bit element is rotated right one bit (the inverse of split's rotation).
//
//go:noescape
func interleave2SSE(dst, p0, p1 *byte, n int, rot bool)

// interleave4SSE is interleave2SSE for four planes and 32-bit elements.
//
//go:noescape
func interleave4SSE(dst, p0, p1, p2, p3 *byte, n int, rot bool)

func interleave2(dst, p0, p1 []byte, rot bool) {
	m := len(p0)
	p1, dst = p1[:m], dst[:2*m]
	k := m &^ 15
	if k > 0 {
		interleave2SSE(&dst[0], &p0[0], &p1[0], k, rot)
	}
	interleave2Generic(dst[2*k:], p0[k:], p1[k:], rot)
}

func interleave4(dst, p0, p1, p2, p3 []byte, rot bool) {
	m := len(p0)
	p1, p2, p3, dst = p1[:m], p2[:m], p3[:m], dst[:4*m]
	k := m &^ 15
	if k > 0 {
		interleave4SSE(&dst[0], &p0[0], &p1[0], &p2[0], &p3[0], k, rot)
	}
	interleave4Generic(dst[4*k:], p0[k:], p1[k:], p2[k:], p3[k:], rot)
}
