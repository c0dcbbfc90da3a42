package tlsutil

import (
	"crypto/tls"
	"errors"
	"io"

	"os"
	"testing"
	"time"
)

// writeNode issues a certificate for id from the CA into dir (IssueFiles).
func writeNode(t *testing.T, dir string, caCert, caKey []byte, id Identity, hosts ...string) Files {
	t.Helper()
	f, err := IssueFiles(dir, caCert, caKey, id, hosts, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(f.Key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file %s: %v %v", f.Key, st, err)
	}
	return f
}

// handshake runs one mutual-TLS connection between server and client on loopback and returns
// what each side saw of the other, or the first error.
func handshake(t *testing.T, server, client *tls.Config) (clientID, serverID Identity, err error) {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan Identity, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- Identity{}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if tc.Handshake() != nil {
			got <- Identity{}
			return
		}
		id, _ := PeerIdentity(tc.ConnectionState())
		got <- id
		io.Copy(io.Discard, c)
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), client)
	if err != nil {
		<-got
		return Identity{}, Identity{}, err
	}
	defer c.Close()
	serverID, err = PeerIdentity(c.ConnectionState())
	return <-got, serverID, err
}

func TestMutualTLSAndIdentities(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey, err := NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	store, err := Load(writeNode(t, dir, caCert, caKey, Identity{RoleStore, "store-0"}, "127.0.0.1", "store-0.pregate-store"))
	if err != nil {
		t.Fatal(err)
	}
	worker, err := Load(writeNode(t, dir, caCert, caKey, Identity{RoleWorker, "worker-0"}, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	clientID, serverID, err := handshake(t, store.ServerConfig(), worker.ClientConfig("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if clientID != (Identity{RoleWorker, "worker-0"}) || serverID != (Identity{RoleStore, "store-0"}) {
		t.Errorf("identities: the store saw %v, the worker %v", clientID, serverID)
	}

	// A node of another cluster (another CA) is refused both ways.
	otherCert, otherKey, _ := NewCA("other", time.Hour)
	rogue, err := Load(writeNode(t, t.TempDir(), otherCert, otherKey, Identity{RoleStore, "rogue"}, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := handshake(t, store.ServerConfig(), rogue.ClientConfig("127.0.0.1")); err == nil {
		t.Error("a client of another CA was accepted")
	}
	if _, _, err := handshake(t, rogue.ServerConfig(), worker.ClientConfig("127.0.0.1")); err == nil {
		t.Error("a server of another CA was trusted")
	}
	// A client without a certificate is refused.
	plain := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	if id, _, err := handshake(t, store.ServerConfig(), plain); err == nil && id != (Identity{}) {
		t.Errorf("a client without a certificate got through as %v", id)
	}
	// A server whose certificate does not name the host dialled is refused.
	far, err := Load(writeNode(t, t.TempDir(), caCert, caKey, Identity{RoleStore, "far"}, "10.9.9.9"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := handshake(t, far.ServerConfig(), worker.ClientConfig("127.0.0.1")); err == nil {
		t.Error("a server certificate for another host was accepted")
	}
}

// TestRotation replaces a node's certificate files: new handshakes present the new certificate
// without a restart.
func TestRotation(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey, _ := NewCA("test", time.Hour)
	files := writeNode(t, dir, caCert, caKey, Identity{RoleStore, "store-0"}, "127.0.0.1")
	store, err := Load(files)
	if err != nil {
		t.Fatal(err)
	}
	worker, _ := Load(writeNode(t, dir, caCert, caKey, Identity{RoleWorker, "worker-0"}, "127.0.0.1"))
	first, _ := store.current()
	time.Sleep(1100 * time.Millisecond) // mtimes must differ; checks run at most once a second
	cert, key, _ := Issue(caCert, caKey, Identity{RoleStore, "store-0"}, []string{"127.0.0.1"}, 2*time.Hour)
	os.WriteFile(files.Key, key, 0o600)
	os.WriteFile(files.Cert, cert, 0o600)
	if _, _, err := handshake(t, store.ServerConfig(), worker.ClientConfig("127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	second, _ := store.current()
	if first.Leaf.SerialNumber.Cmp(second.Leaf.SerialNumber) == 0 {
		t.Error("the rotated certificate was not picked up")
	}
	// A broken replacement keeps the last good certificate.
	time.Sleep(1100 * time.Millisecond)
	os.WriteFile(files.Cert, []byte("not a certificate"), 0o600)
	if _, _, err := handshake(t, store.ServerConfig(), worker.ClientConfig("127.0.0.1")); err != nil {
		t.Errorf("a broken replacement stopped the server: %v", err)
	}
}

func TestIssueAndLoadErrors(t *testing.T) {
	caCert, caKey, _ := NewCA("test", time.Hour)
	if _, _, err := Issue(caCert, caKey, Identity{"emperor", "x"}, nil, time.Hour); err == nil {
		t.Error("an unknown role was issued")
	}
	if _, err := Load(Files{CA: "x"}); err == nil {
		t.Error("Load without a certificate and key")
	}
	dir := t.TempDir()
	f := writeNode(t, dir, caCert, caKey, Identity{RoleWorker, "w"})
	os.WriteFile(f.CA, []byte("junk"), 0o600)
	if _, err := Load(f); err == nil {
		t.Error("Load with a CA file holding no certificate")
	}
	if _, err := PeerIdentity(tls.ConnectionState{}); !errors.Is(err, ErrIdentity) {
		t.Errorf("PeerIdentity of an unverified connection: %v", err)
	}
}
