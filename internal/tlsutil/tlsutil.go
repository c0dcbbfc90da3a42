// Package tlsutil is the cluster's mutual TLS: one CA per cluster, a certificate per node naming
// its role, and tls.Configs that reload the files when they change (rotation without a restart).
//
// Identity scheme: a node certificate carries its role and name twice — the subject
// (CommonName = role, OrganizationalUnit = name) for humans and tools, and a URI SAN
// pregate://<role>/<name> that authorization reads (PeerIdentity). The CommonName is the role
// because etcd, with client-certificate authentication, takes a certificate's CommonName as its
// etcd user: the etcd users are the roles (docs/SECURITY.md). Roles: coordinator, store,
// worker, importer, admin. Its DNS and IP SANs are the hosts it serves on. Every certificate is
// good for both server and client authentication: daemons are both.
package tlsutil

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/pregate/pregate/internal/atomicfile"
)

// Roles a certificate may name.
const (
	RoleCoordinator = "coordinator"
	RoleStore       = "store"
	RoleWorker      = "worker"
	RoleImporter    = "importer"
	RoleAdmin       = "admin"
)

var roles = []string{RoleCoordinator, RoleStore, RoleWorker, RoleImporter, RoleAdmin}

// Identity is who a certificate says its holder is.
type Identity struct {
	Role, Name string
}

func (id Identity) uri() *url.URL {
	return &url.URL{Scheme: "pregate", Host: id.Role, Path: "/" + id.Name}
}

func (id Identity) String() string { return id.Role + "/" + id.Name }

// ErrIdentity is returned (wrapped) for a certificate without a valid pregate identity.
var ErrIdentity = errors.New("tlsutil: no pregate identity in the certificate")

// IdentityOf reads a certificate's pregate identity from its URI SAN.
func IdentityOf(c *x509.Certificate) (Identity, error) {
	for _, u := range c.URIs {
		if u.Scheme != "pregate" {
			continue
		}
		id := Identity{Role: u.Host, Name: u.Path[min(1, len(u.Path)):]}
		if !slices.Contains(roles, id.Role) || id.Name == "" {
			return Identity{}, fmt.Errorf("%w: %q", ErrIdentity, u)
		}
		return id, nil
	}
	return Identity{}, fmt.Errorf("%w (subject %q)", ErrIdentity, c.Subject)
}

// PeerIdentity is the identity of the peer of a connection made with this package's configs:
// on a server, the client certificate tls verified (VerifiedChains); on a client, the server's,
// which ClientConfig's VerifyConnection verified (tls itself records no chain then).
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	switch {
	case len(cs.VerifiedChains) > 0 && len(cs.VerifiedChains[0]) > 0:
		return IdentityOf(cs.VerifiedChains[0][0])
	case len(cs.PeerCertificates) > 0 && cs.HandshakeComplete:
		return IdentityOf(cs.PeerCertificates[0])
	}
	return Identity{}, fmt.Errorf("%w: the peer presented no verified certificate", ErrIdentity)
}

// NewCA returns a new self-signed CA certificate and its key, PEM-encoded.
func NewCA(cluster string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"pregate"}, CommonName: "pregate CA " + cluster},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	return encode(der, key)
}

// Issue signs a certificate for id, valid for hosts (DNS names or IPs), with the CA in caCertPEM
// and caKeyPEM.
func Issue(caCertPEM, caKeyPEM []byte, id Identity, hosts []string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if !slices.Contains(roles, id.Role) || id.Name == "" {
		return nil, nil, fmt.Errorf("tlsutil: identity %q: the role must be one of %v and the name non-empty", id, roles)
	}
	ca, err := tls.X509KeyPair(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{Organization: []string{"pregate"}, OrganizationalUnit: []string{id.Name}, CommonName: id.Role},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.uri()},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return nil, nil, err
	}
	return encode(der, key)
}

// IssueFiles issues a certificate for id (Issue) and writes it into dir with the CA's certificate:
// dir/ca.crt, dir/<name>.crt and dir/<name>.key, readable by the owner only. It returns their Files.
func IssueFiles(dir string, caCertPEM, caKeyPEM []byte, id Identity, hosts []string, validity time.Duration) (Files, error) {
	cert, key, err := Issue(caCertPEM, caKeyPEM, id, hosts, validity)
	if err != nil {
		return Files{}, err
	}
	f := Files{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, id.Name+".crt"), Key: filepath.Join(dir, id.Name+".key")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Files{}, err
	}
	for _, w := range []struct {
		path string
		b    []byte
	}{{f.CA, caCertPEM}, {f.Cert, cert}, {f.Key, key}} {
		if old, err := os.ReadFile(w.path); err == nil && bytes.Equal(old, w.b) {
			continue // the CA, written for an earlier node: leave its readers' copy alone
		}
		// Atomically: a node (or etcd) reading these files must never see them half-written.
		if err := atomicfile.WriteFileMode(w.path, w.b, 0o600); err != nil {
			return Files{}, err
		}
	}
	return f, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func encode(der []byte, key *ecdsa.PrivateKey) (certPEM, keyPEM []byte, err error) {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), nil
}

// Files are where a node's TLS material lives.
type Files struct {
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// Set reports whether any file is named (then all three must be).
func (f Files) Set() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

// Reloader serves a node's certificate and the cluster's CA from Files, reading them again when
// any changes (checked at most once a second, on a handshake): replacing the files rotates the
// certificate, or the CA, without a restart. A reload that fails keeps what was loaded before.
type Reloader struct {
	files Files
	mu    sync.Mutex
	cert  *tls.Certificate
	roots *x509.CertPool
	mtime [3]time.Time
	check time.Time
}

// Load reads files once (an error names what is wrong) and returns their Reloader.
func Load(files Files) (*Reloader, error) {
	if files.CA == "" || files.Cert == "" || files.Key == "" {
		return nil, fmt.Errorf("tlsutil: TLS needs a CA, a certificate and a key (got %+v)", files)
	}
	r := &Reloader{files: files}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Reloader) reload() error {
	var mt [3]time.Time
	for i, p := range []string{r.files.CA, r.files.Cert, r.files.Key} {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("tlsutil: %w", err)
		}
		mt[i] = st.ModTime()
	}
	if r.cert != nil && mt == r.mtime {
		return nil
	}
	caPEM, err := os.ReadFile(r.files.CA)
	if err != nil {
		return fmt.Errorf("tlsutil: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("tlsutil: %s holds no PEM certificate", r.files.CA)
	}
	cert, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
	if err != nil {
		return fmt.Errorf("tlsutil: %s / %s: %w", r.files.Cert, r.files.Key, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return fmt.Errorf("tlsutil: %s: %w", r.files.Cert, err)
	}
	if _, err := IdentityOf(leaf); err != nil {
		return fmt.Errorf("tlsutil: %s: %w", r.files.Cert, err)
	}
	cert.Leaf = leaf
	r.cert, r.roots, r.mtime = &cert, roots, mt
	return nil
}

// current returns the certificate and roots, reloading them if a file changed.
func (r *Reloader) current() (*tls.Certificate, *x509.CertPool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.check) >= time.Second {
		r.check = now
		r.reload() //nolint:errcheck // a file being replaced: keep serving what was loaded
	}
	return r.cert, r.roots
}

// Files are the files r reads.
func (r *Reloader) Files() Files { return r.files }

// Identity is this node's own identity.
func (r *Reloader) Identity() Identity {
	c, _ := r.current()
	id, _ := IdentityOf(c.Leaf)
	return id
}

// ServerConfig requires and verifies a client certificate from the cluster's CA.
func (r *Reloader) ServerConfig() *tls.Config { return r.serverConfig(tls.RequireAndVerifyClientCert) }

// HTTPServerConfig verifies a client certificate from the cluster's CA when one is given: an HTTP
// server whose probes (kubelet's) and scrapes present none, and whose handlers require one where
// it matters (RequireIdentity).
func (r *Reloader) HTTPServerConfig() *tls.Config { return r.serverConfig(tls.VerifyClientCertIfGiven) }

func (r *Reloader) serverConfig(auth tls.ClientAuthType) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, roots := r.current()
			return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert},
				ClientCAs: roots, ClientAuth: auth, NextProtos: []string{"h2", "http/1.1"},
				// Full-size records from the first byte: expert blobs are bulk transfers, and the
				// small records TLS starts with (for a web page's latency) cost throughput here.
				DynamicRecordSizingDisabled: true}, nil
		},
	}
}

// ClientConfig presents this node's certificate and verifies the server's against the cluster's
// CA (the current one, hence the custom verification: tls.Config's RootCAs is fixed) and against
// host, the host dialled (a DNS name or an IP; TLS sends no server name for an IP, so the
// connection state cannot tell it).
func (r *Reloader) ClientConfig(host string) *tls.Config { return r.ClientConfigAs(host, "") }

// ClientConfigAs is ClientConfig that also requires the server's certificate to name role (any
// role when role is ""): a store's clients talk to stores only, so a Copy cannot be pointed at a
// node of another role, even one of the cluster. A host of "" is not checked.
func (r *Reloader) ClientConfigAs(host, role string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: host,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _ := r.current()
			return cert, nil
		},
		InsecureSkipVerify: true, // verified below, with the current roots and host
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, roots := r.current()
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tlsutil: the server presented no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots,
				Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return err
			}
			if role == "" {
				return nil
			}
			id, err := IdentityOf(leaf)
			if err != nil {
				return err
			}
			if id.Role != role {
				return fmt.Errorf("tlsutil: %s at %s is not a %s", id, host, role)
			}
			return nil
		},
	}
}

// DialConfig is ClientConfig for the host of addr (host:port).
func (r *Reloader) DialConfig(addr string) *tls.Config { return r.DialConfigAs(addr, "") }

// DialConfigAs is ClientConfigAs for the host of addr (host:port).
func (r *Reloader) DialConfigAs(addr, role string) *tls.Config {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return r.ClientConfigAs(host, role)
}

// Credentials are gRPC transport credentials over r: servers require and verify client
// certificates, clients verify the server against the authority they dial.
func (r *Reloader) Credentials() credentials.TransportCredentials { return grpcCreds{r: r} }

// CredentialsAs are Credentials whose clients also require the server's certificate to name role.
func (r *Reloader) CredentialsAs(role string) credentials.TransportCredentials {
	return grpcCreds{r: r, role: role}
}

type grpcCreds struct {
	r    *Reloader
	role string // the role a server must have ("": any)
}

func (g grpcCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return credentials.NewTLS(g.r.DialConfigAs(authority, g.role)).ClientHandshake(ctx, authority, conn)
}

func (g grpcCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return credentials.NewTLS(g.r.ServerConfig()).ServerHandshake(conn)
}

func (g grpcCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (g grpcCreds) Clone() credentials.TransportCredentials { return g }

//nolint:staticcheck // part of the interface, deprecated upstream
func (g grpcCreds) OverrideServerName(string) error { return nil }

// Bulk wraps a connection for bulk transfers under TLS: crypto/tls writes each 16 KiB record with
// a system call of its own and reads a record at a time, which capped a store's data plane near
// 1.2 GB/s on a machine that seals 6.6 GB/s. A reading end (NewBulkReader: a client) reads many
// records per system call through a large buffer; a writing end (NewBulkWriter: a store) coalesces
// writes while corked (Cork, then Flush after the last record of an answer) and writes straight
// through otherwise, so the handshake is not delayed. A corked writer borrows its buffer from a
// pool for the burst only: an idle connection holds none (a store keeps thousands).
type Bulk struct {
	net.Conn
	rd *bufio.Reader // nil: reads go straight to the connection
	mu sync.Mutex    // guards wr: tls.Conn's Close writes an alert from whichever goroutine closes
	wr *bufio.Writer // non-nil while corked
}

// bulkBuffer is how much Bulk reads and writes per system call.
const bulkBuffer = 256 << 10

var bulkWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bulkBuffer) }}

// NewBulkReader wraps the connection of an end that mostly reads.
func NewBulkReader(c net.Conn) *Bulk { return &Bulk{Conn: c, rd: bufio.NewReaderSize(c, bulkBuffer)} }

// NewBulkWriter wraps the connection of an end that mostly writes.
func NewBulkWriter(c net.Conn) *Bulk { return &Bulk{Conn: c} }

func (b *Bulk) Read(p []byte) (int, error) {
	if b.rd == nil {
		return b.Conn.Read(p)
	}
	return b.rd.Read(p)
}

func (b *Bulk) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.wr == nil {
		return b.Conn.Write(p)
	}
	return b.wr.Write(p)
}

// Cork starts coalescing writes.
func (b *Bulk) Cork() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.wr == nil {
		b.wr = bulkWriters.Get().(*bufio.Writer)
		b.wr.Reset(b.Conn)
	}
}

// Flush sends what was coalesced and stops coalescing.
func (b *Bulk) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.wr == nil {
		return nil
	}
	err := b.wr.Flush()
	b.wr.Reset(nil)
	bulkWriters.Put(b.wr)
	b.wr = nil
	return err
}

// EtcdClientConfig is the client side of mutual TLS with the cluster's etcd: this node's
// certificate, and a server that must hold a coordinator's certificate of the cluster's CA (the
// etcd members are the coordinators' embedded ones). The host is not checked: etcd's client
// dials several endpoints through one tls.Config, and TLS keeps no server name for an IP; a
// certificate naming the coordinator role is what a server must show.
func (r *Reloader) EtcdClientConfig() *tls.Config { return r.ClientConfigAs("", RoleCoordinator) }

// Authority is a cluster CA held in memory that issues node certificates into a directory, for
// `pregate up`, benchmarks and tests (a production cluster keeps its CA key off the nodes and uses
// `pregate certs`).
type Authority struct {
	dir           string
	caCert, caKey []byte
}

// NewAuthority makes a new CA for cluster, issuing into dir.
func NewAuthority(dir, cluster string, validity time.Duration) (*Authority, error) {
	c, k, err := NewCA(cluster, validity)
	if err != nil {
		return nil, err
	}
	return &Authority{dir: dir, caCert: c, caKey: k}, nil
}

// CA returns the CA's certificate and key, PEM-encoded (for a Secret to hold, as `pregate certs
// ca` writes them).
func (a *Authority) CA() (certPEM, keyPEM []byte) { return a.caCert, a.caKey }

// Node issues id a certificate for hosts, valid for validity, and loads it.
func (a *Authority) Node(id Identity, hosts []string, validity time.Duration) (*Reloader, error) {
	f, err := IssueFiles(a.dir, a.caCert, a.caKey, id, hosts, validity)
	if err != nil {
		return nil, err
	}
	return Load(f)
}
