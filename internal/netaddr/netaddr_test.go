package netaddr

import (
	"context"
	"net"
	"strings"
	"testing"
)

func TestPublish(t *testing.T) {
	def, err := DefaultHost()
	if err != nil {
		t.Skipf("no non-loopback address here: %v", err) // DefaultHost's own error is what we would test
	}
	if ip := net.ParseIP(def); ip == nil || ip.IsLoopback() || ip.IsUnspecified() {
		t.Fatalf("DefaultHost %q", def)
	}
	for _, c := range []struct{ bound, adv, want string }{
		{"0.0.0.0:7070", "", net.JoinHostPort(def, "7070")},
		{"[::]:7070", "", net.JoinHostPort(def, "7070")},
		{":7070", "", net.JoinHostPort(def, "7070")},
		{"0.0.0.0:7070", "10.1.2.3", "10.1.2.3:7070"},
		{"0.0.0.0:7070", "store-0.pregate-store", "store-0.pregate-store:7070"},
		{"127.0.0.1:41234", "", "127.0.0.1:41234"},
		{"198.18.0.5:7071", "", "198.18.0.5:7071"},
		{"198.18.0.5:7071", "fd00::5", "[fd00::5]:7071"},
	} {
		got, err := Publish(c.bound, c.adv)
		if err != nil || got != c.want {
			t.Errorf("Publish(%q, %q) = %q, %v; want %q", c.bound, c.adv, got, err, c.want)
		}
		if IsWildcard(got) {
			t.Errorf("Publish(%q, %q) = %q is a wildcard", c.bound, c.adv, got)
		}
	}
	if _, err := Publish("no-port", ""); err == nil || !strings.Contains(err.Error(), "no-port") {
		t.Errorf("Publish of a bad address: %v", err)
	}
}

func TestIsWildcard(t *testing.T) {
	for addr, want := range map[string]bool{"0.0.0.0:1": true, "[::]:1": true, ":1": true, "127.0.0.1:1": false, "10.0.0.1:1": false, "bad": false} {
		if IsWildcard(addr) != want {
			t.Errorf("IsWildcard(%q) = %v", addr, !want)
		}
	}
	if Any(StoreGRPCPort) != "0.0.0.0:7070" {
		t.Errorf("Any = %q", Any(StoreGRPCPort))
	}
}

func TestResolveIP(t *testing.T) {
	ctx := context.Background()
	if ip, err := ResolveIP(ctx, "198.18.0.7"); err != nil || ip != "198.18.0.7" {
		t.Errorf("an IP: %q, %v", ip, err)
	}
	if ip, err := ResolveIP(ctx, "localhost"); err != nil || !net.ParseIP(ip).IsLoopback() {
		t.Errorf("localhost: %q, %v", ip, err)
	}
	if _, err := ResolveIP(ctx, "no-such-host.invalid"); err == nil || !strings.Contains(err.Error(), "no-such-host.invalid") {
		t.Errorf("a name that does not resolve: %v", err)
	}
}
