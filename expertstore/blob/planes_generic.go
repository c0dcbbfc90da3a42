//go:build !amd64 || noasm

package blob

func interleave2(dst, p0, p1 []byte, rot bool) { interleave2Generic(dst, p0, p1, rot) }

func interleave4(dst, p0, p1, p2, p3 []byte, rot bool) {
	interleave4Generic(dst, p0, p1, p2, p3, rot)
}
