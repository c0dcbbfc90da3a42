package tlsutil

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Policy is a server's authorization, deny by default: for each operation (a gRPC full method
// name such as /pregate.store.v1.ExpertStore/Put, or a name a server gives a non-gRPC operation),
// the roles whose certificates may call it. An operation the policy does not name is refused to
// every role.
type Policy map[string][]string

// Allow reports whether id may call op, with an error naming both when it may not.
func (p Policy) Allow(id Identity, op string) error {
	roles, ok := p[op]
	if !ok {
		return fmt.Errorf("%s may not call %s: no role may", id, op)
	}
	if !slices.Contains(roles, id.Role) {
		return fmt.Errorf("%s may not call %s (allowed: %s)", id, op, strings.Join(roles, ", "))
	}
	return nil
}

// AllowConn is Allow for the peer of a connection made with this package's configs.
func (p Policy) AllowConn(cs tls.ConnectionState, op string) (Identity, error) {
	id, err := PeerIdentity(cs)
	if err != nil {
		return id, err
	}
	return id, p.Allow(id, op)
}

// allowCtx authorizes a gRPC call: PermissionDenied for a role the policy does not allow,
// Unauthenticated for a peer without a verified pregate certificate.
func (p Policy) allowCtx(ctx context.Context, method string) error {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no peer in the call's context")
	}
	info, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return status.Errorf(codes.Unauthenticated, "%s: not over mutual TLS", method)
	}
	id, err := PeerIdentity(info.State)
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	if err := p.Allow(id, method); err != nil {
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return nil
}

// UnaryInterceptor refuses unary calls the policy does not allow the caller's certificate.
func (p Policy) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := p.allowCtx(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// StreamInterceptor refuses streams the policy does not allow the caller's certificate.
func (p Policy) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := p.allowCtx(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return h(srv, ss)
	}
}

// RequireIdentity wraps h so that only requests over TLS with a verified certificate of the
// cluster's CA reach it (any role); others get 403, naming why.
func RequireIdentity(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			http.Error(w, "a client certificate of the cluster is required (this server speaks TLS)", http.StatusForbidden)
			return
		}
		if _, err := PeerIdentity(*r.TLS); err != nil {
			http.Error(w, "a client certificate of the cluster is required: "+err.Error(), http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// HTTPClient is an HTTP client that presents r's certificate and requires the server's to name
// role (any role for "").
func (r *Reloader) HTTPClient(role string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := tls.Dialer{Config: r.DialConfigAs(addr, role)}
			return d.DialContext(ctx, network, addr)
		},
		ForceAttemptHTTP2: true,
	}}
}
