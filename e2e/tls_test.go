//go:build e2e

package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pregate/pregate/internal/tlsutil"
)

// clusterTLS says whether StartCluster's clusters run with mutual TLS and an encrypted gossip, as
// `pregate up` and a production cluster do: on unless PREGATE_E2E_TLS=0. (The chart mode runs
// the chart's values as they are.)
var clusterTLS = os.Getenv("PREGATE_E2E_TLS") != "0"

// clusterPKI is a cluster's CA and gossip key, issuing each node a certificate of its role on
// its own address, as `pregate certs` would for an operator.
type clusterPKI struct {
	ca        *tlsutil.Authority
	gossipKey string // the key file's path
	mu        sync.Mutex
	issued    map[string]tlsutil.Files // by role/name: issued once (imports run in parallel)
}

func newClusterPKI(t testing.TB, dir string) *clusterPKI {
	t.Helper()
	ca, err := tlsutil.NewAuthority(filepath.Join(dir, "certs"), "e2e", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "certs", "gossip.key")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &clusterPKI{ca: ca, gossipKey: path, issued: map[string]tlsutil.Files{}}
}

// secure gives d the certificate of role/name (hosts: ip) and the gossip key, through the
// daemons' PREGATE_* variables, and probes a coordinator over HTTPS.
func (p *clusterPKI) secure(t testing.TB, d Daemon, role, name, ip string) Daemon {
	t.Helper()
	p.mu.Lock()
	f, ok := p.issued[role+"/"+name]
	if !ok {
		r, err := p.ca.Node(tlsutil.Identity{Role: role, Name: name}, []string{ip}, 24*time.Hour)
		if err != nil {
			p.mu.Unlock()
			t.Fatal(err)
		}
		f = r.Files()
		p.issued[role+"/"+name] = f
	}
	p.mu.Unlock()
	d.Env = append(append([]string(nil), d.Env...), "PREGATE_TLS_CA="+f.CA, "PREGATE_TLS_CERT="+f.Cert, "PREGATE_TLS_KEY="+f.Key)
	if role != tlsutil.RoleImporter && role != tlsutil.RoleAdmin { // the daemons gossip; the tools do not
		d.Env = append(d.Env, "PREGATE_GOSSIP_KEY_FILE="+p.gossipKey)
	}
	if role == tlsutil.RoleCoordinator {
		d.ReadyURL = strings.Replace(d.ReadyURL, "http://", "https://", 1)
	}
	return d
}

// secure is clusterPKI.secure for c's daemons (d as it is without TLS).
func (c *Cluster) secure(t testing.TB, d Daemon, role, name, ip string) Daemon {
	if c.pki == nil {
		return d
	}
	t.Helper()
	return c.pki.secure(t, d, role, name, ip)
}

// CoordURL is the base URL of the coordinator on nd (https with TLS).
func (c *Cluster) CoordURL(nd *Node) string {
	if c.pki != nil {
		return strings.Replace(CoordinatorURL(nd.IP), "http://", "https://", 1)
	}
	return CoordinatorURL(nd.IP)
}
