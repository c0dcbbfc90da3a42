package storepb

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors of the expert store API. The store returns them wrapped with context; they cross the wire
// as canonical gRPC codes (one table, below) and come back out of FromStatus as the same sentinels,
// so errors.Is works on both sides.
var (
	ErrNotFound   = errors.New("expertstore: blob not found")
	ErrTooLarge   = errors.New("expertstore: blob too large")
	ErrFull       = errors.New("expertstore: store is full")
	ErrOverloaded = errors.New("expertstore: too many bytes in flight")
	ErrCorrupt    = errors.New("expertstore: corrupt bytes")
	ErrBadRange   = errors.New("expertstore: byte range out of bounds")
	ErrBadRequest = errors.New("expertstore: bad request")
	ErrClosed     = errors.New("expertstore: store is closed")
	ErrTimeout    = errors.New("expertstore: peer idle too long")
	ErrDenied     = errors.New("expertstore: permission denied")
)

var codeOf = []struct {
	err  error
	code codes.Code
}{
	{ErrNotFound, codes.NotFound},
	{ErrTooLarge, codes.ResourceExhausted},
	{ErrFull, codes.ResourceExhausted},
	{ErrOverloaded, codes.ResourceExhausted},
	{ErrCorrupt, codes.DataLoss},
	{ErrBadRange, codes.OutOfRange},
	{ErrBadRequest, codes.InvalidArgument},
	{ErrClosed, codes.Unavailable},
	{ErrTimeout, codes.DeadlineExceeded},
	{ErrDenied, codes.PermissionDenied},
}

// ToStatus turns an error into a gRPC status error carrying the sentinel's code and the error's
// text. Context errors map to Canceled / DeadlineExceeded; anything else is Internal.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, c := range codeOf {
		if errors.Is(err, c.err) {
			return status.Error(c.code, err.Error())
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// FromStatus turns a gRPC status error back into an error that matches the store's sentinels with
// errors.Is (for ResourceExhausted, the sentinel named in the message when there is one). Errors
// without a status pass through.
func FromStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return err
	}
	msg := st.Message()
	for _, c := range codeOf {
		if c.code == st.Code() && (strings.Contains(msg, c.err.Error()) || !ambiguous(c.code)) {
			return &wireError{sentinel: c.err, code: st.Code(), msg: msg}
		}
	}
	switch st.Code() {
	case codes.ResourceExhausted:
		return &wireError{sentinel: ErrOverloaded, code: st.Code(), msg: msg}
	case codes.Canceled:
		return &wireError{sentinel: context.Canceled, code: st.Code(), msg: msg}
	case codes.DeadlineExceeded:
		return &wireError{sentinel: context.DeadlineExceeded, code: st.Code(), msg: msg}
	}
	return err
}

// ambiguous codes are shared by several sentinels (or with context.DeadlineExceeded); the message
// decides.
func ambiguous(c codes.Code) bool { return c == codes.ResourceExhausted || c == codes.DeadlineExceeded }

// wireError is an error that came over the wire: it matches its sentinel and keeps its code.
type wireError struct {
	sentinel error
	code     codes.Code
	msg      string
}

func (e *wireError) Error() string { return fmt.Sprintf("%s (%s)", e.msg, e.code) }
func (e *wireError) Unwrap() error { return e.sentinel }

// GRPCStatus lets status.FromError and status.Code see the original code.
func (e *wireError) GRPCStatus() *status.Status { return status.New(e.code, e.msg) }
