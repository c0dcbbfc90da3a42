package main

import (
	"cmp"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pregate/pregate/internal/tlsutil"
)

// newCertsCmd makes a cluster's CA and node certificates, for development, tests and small
// installs (a production cluster may issue them from its own PKI with the same identity scheme:
// docs/ARCHITECTURE.md).
func newCertsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Create a cluster CA and issue node certificates (mutual TLS)",
	}
	var (
		dir, cluster string
		days         int
	)
	ca := &cobra.Command{
		Use:   "ca --dir DIR",
		Short: "Create the cluster's CA: DIR/ca.crt and DIR/ca.key (never overwritten)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			crt, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
			for _, p := range []string{crt, key} {
				if _, err := os.Stat(p); err == nil {
					return fmt.Errorf("%s exists: a cluster keeps its CA (remove it to start over)", p)
				}
			}
			c, k, err := tlsutil.NewCA(cluster, time.Duration(days)*24*time.Hour)
			if err != nil {
				return err
			}
			if err := writeSecretFiles(dir, map[string][]byte{"ca.crt": c, "ca.key": k}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n%s\n", crt, key)
			return nil
		},
	}
	ca.Flags().StringVar(&cluster, "cluster", "default", "cluster name (in the CA's subject)")
	var (
		role, name, caDir, file string
		hosts                   []string
	)
	issue := &cobra.Command{
		Use:   "issue --dir DIR --role ROLE --name NAME [--host H]...",
		Short: "Issue a node certificate from DIR's CA: DIR/NAME.crt and DIR/NAME.key",
		Long: "Issue a node certificate. The CA is read from --ca-dir (default --dir), the certificate, its\n" +
			"key and the CA's certificate are written to --dir as FILE.crt, FILE.key and ca.crt (FILE: --file,\n" +
			"default the name). The chart's init containers run it with the CA in a Secret of their own.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return errors.New("--name is required")
			}
			from := cmp.Or(caDir, dir)
			caCert, err := os.ReadFile(filepath.Join(from, "ca.crt"))
			if err != nil {
				return fmt.Errorf("the CA: %w (create it with `pregate certs ca`)", err)
			}
			caKey, err := os.ReadFile(filepath.Join(from, "ca.key"))
			if err != nil {
				return fmt.Errorf("the CA: %w", err)
			}
			var hostList []string
			for _, h := range hosts { // unset variables in a pod spec expand to nothing
				if h = strings.TrimSpace(h); h != "" {
					hostList = append(hostList, h)
				}
			}
			f, err := tlsutil.IssueFiles(dir, caCert, caKey, tlsutil.Identity{Role: role, Name: name}, hostList, time.Duration(days)*24*time.Hour)
			if err == nil && file != "" && file != name {
				err = renameIssued(f, dir, file)
				f.Cert, f.Key = filepath.Join(dir, file+".crt"), filepath.Join(dir, file+".key")
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n%s\n", f.Cert, f.Key)
			return nil
		},
	}
	issue.Flags().StringVar(&role, "role", "", "coordinator, store, worker, importer or admin")
	issue.Flags().StringVar(&name, "name", "", "the node's name (its --node-name)")
	issue.Flags().StringVar(&caDir, "ca-dir", "", "directory of the CA (default --dir)")
	issue.Flags().StringVar(&file, "file", "", "base name of the certificate and key files (default --name)")
	issue.Flags().StringSliceVar(&hosts, "host", []string{"localhost", "127.0.0.1"}, "DNS names and IPs the node serves on (its --advertise-host); repeat or comma-separate")
	for c, validity := range map[*cobra.Command]int{ca: 3650, issue: 365} {
		c.Flags().StringVar(&dir, "dir", "pregate-certs", "directory of the CA and the certificates")
		c.Flags().IntVar(&days, "days", validity, "validity in days")
	}
	var keyOut string
	gossipKey := &cobra.Command{
		Use:   "gossip-key --out FILE",
		Short: "Write a new gossip encryption key (32 random bytes, base64) to FILE (never overwritten)",
		Long: "Write a new gossip encryption key to FILE, for --gossip-key-file (required with TLS).\n" +
			"To rotate a running cluster's key, append the new key as a second line to every node's\n" +
			"file, then move it first, then remove the old line, waiting a few seconds between steps\n" +
			"(docs/SECURITY.md).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyOut == "" {
				return errors.New("--out is required")
			}
			key := make([]byte, 32)
			if _, err := rand.Read(key); err != nil {
				return err
			}
			f, err := os.OpenFile(keyOut, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("--out: %w (a key file is never overwritten)", err)
			}
			if _, err := fmt.Fprintln(f, base64.StdEncoding.EncodeToString(key)); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), keyOut)
			return nil
		},
	}
	gossipKey.Flags().StringVar(&keyOut, "out", "", "the key file to create")
	cmd.AddCommand(ca, issue, gossipKey)
	return cmd
}

// renameIssued moves the certificate and key IssueFiles wrote (named after the node) to file.crt
// and file.key in dir.
func renameIssued(f tlsutil.Files, dir, file string) error {
	if err := os.Rename(f.Cert, filepath.Join(dir, file+".crt")); err != nil {
		return err
	}
	return os.Rename(f.Key, filepath.Join(dir, file+".key"))
}

// writeSecretFiles writes files (name → bytes) into dir, readable by the owner only.
func writeSecretFiles(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// tlsFlags are a daemon's or a client's mutual TLS files: --tls-ca, --tls-cert, --tls-key.
type tlsFlags struct{ files tlsutil.Files }

func (f *tlsFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.files.CA, "tls-ca", "", "the cluster CA's certificate (mutual TLS with the stores; with --tls-cert and --tls-key)")
	fs.StringVar(&f.files.Cert, "tls-cert", "", "this node's certificate, from `pregate certs issue` (reloaded when it changes)")
	fs.StringVar(&f.files.Key, "tls-key", "", "this node's private key")
}

// load returns the Reloader the flags name, nil when none is set.
func (f *tlsFlags) load() (*tlsutil.Reloader, error) {
	if !f.files.Set() {
		return nil, nil
	}
	r, err := tlsutil.Load(f.files)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca/--tls-cert/--tls-key: %w", err)
	}
	return r, nil
}
