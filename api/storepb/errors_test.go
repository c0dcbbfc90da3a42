package storepb

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestErrorsCrossTheWire(t *testing.T) {
	tests := []struct {
		give error
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
		{context.DeadlineExceeded, codes.DeadlineExceeded},
	}
	for _, tt := range tests {
		wrapped := fmt.Errorf("%w: details", tt.give)
		st := ToStatus(wrapped)
		if status.Code(st) != tt.code {
			t.Errorf("%v: code %v, want %v", tt.give, status.Code(st), tt.code)
		}
		back := FromStatus(st)
		if !errors.Is(back, tt.give) {
			t.Errorf("%v: back from the wire as %v, which is not it", tt.give, back)
		}
		if status.Code(back) != tt.code {
			t.Errorf("%v: back from the wire with code %v", tt.give, status.Code(back))
		}
	}
	if status.Code(ToStatus(errors.New("boom"))) != codes.Internal {
		t.Error("unknown error is not Internal")
	}
	if FromStatus(nil) != nil || ToStatus(nil) != nil {
		t.Error("nil is not nil")
	}
}
