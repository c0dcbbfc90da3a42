// Package netaddr decides the addresses a daemon publishes: what other hosts dial, as opposed to
// what the daemon binds. A daemon binds 0.0.0.0:7070 (every interface) but publishes
// <advertise host>:7070; a wildcard or loopback bind address never reaches a record another host
// reads, unless the daemon was told to advertise loopback (a one-host cluster).
//
//	bind 0.0.0.0:7070, advertise ""          ──▶ <first non-loopback address>:7070
//	bind 0.0.0.0:7070, advertise 10.0.0.5    ──▶ 10.0.0.5:7070
//	bind 127.0.0.1:0 (port 41234), advertise "" ──▶ 127.0.0.1:41234 (an explicit address is kept)
package netaddr

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// Default ports: one table for every daemon (docs/ARCHITECTURE.md repeats it).
const (
	CoordinatorHTTPPort = 7080
	EtcdClientPort      = 2379
	EtcdPeerPort        = 2380
	GossipPort          = 7946
	StoreGRPCPort       = 7070
	StoreDataPort       = 7071
	StoreHTTPPort       = 7072
	WorkerHTTPPort      = 8000
)

// Any returns the wildcard bind address for port ("0.0.0.0:7070").
func Any(port int) string { return net.JoinHostPort("0.0.0.0", strconv.Itoa(port)) }

// DefaultHost returns the host's first non-loopback unicast address of an interface that is up,
// IPv4 before IPv6, in the kernel's interface order: what a daemon advertises when it is given no
// --advertise-host. In a Kubernetes pod that is the pod IP.
func DefaultHost() (string, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("netaddr: list interfaces: %w", err)
	}
	var v6 string
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || !ipn.IP.IsGlobalUnicast() {
				continue
			}
			if ip4 := ipn.IP.To4(); ip4 != nil {
				return ip4.String(), nil
			}
			if v6 == "" {
				v6 = ipn.IP.String()
			}
		}
	}
	if v6 != "" {
		return v6, nil
	}
	return "", errors.New("netaddr: no non-loopback address on any interface that is up: set --advertise-host")
}

// Publish returns the address to publish for a listener bound at bound (host:port, the port
// already resolved): advertise:port when advertise is set; the bound address itself when its host
// is a specific address; DefaultHost():port when it is a wildcard.
func Publish(bound, advertise string) (string, error) {
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return "", fmt.Errorf("netaddr: %q: %w", bound, err)
	}
	if advertise != "" {
		return net.JoinHostPort(advertise, port), nil
	}
	if ip := net.ParseIP(host); host != "" && ip != nil && !ip.IsUnspecified() {
		return bound, nil
	}
	h, err := DefaultHost()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(h, port), nil
}

// ResolveIP returns host as an IP address, resolving a DNS name (the first address, IPv4 first):
// gossip advertises IPs only.
func ResolveIP(ctx context.Context, host string) (string, error) {
	if ip := net.ParseIP(host); ip != nil {
		return ip.String(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIP(ctx, "ip", host)
	if err != nil {
		return "", fmt.Errorf("netaddr: resolve %q: %w", host, err)
	}
	for _, ip := range ips {
		if ip4 := ip.To4(); ip4 != nil {
			return ip4.String(), nil
		}
	}
	if len(ips) == 0 {
		return "", fmt.Errorf("netaddr: resolve %q: no addresses", host)
	}
	return ips[0].String(), nil
}

// IsWildcard reports whether addr (host:port) binds every interface.
func IsWildcard(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "" || ip != nil && ip.IsUnspecified()
}
