//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Proc is a process started on a node by `ip netns exec`, which execs it in place: the pid is the
// daemon's, and signals reach it directly. Its stdout and stderr go to <node dir>/<role>.<n>.log
// (stdout alone to the caller's writer for Node.Run).
type Proc struct {
	node *Node
	d    Daemon
	name string // role.n
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process was waited for; err is set then
	err  error
	// oneShot: started by Node.Run or Exec, which report its failure themselves.
	oneShot bool
}

// env is the whole environment a daemon gets: no variable of the test's own (a stray
// PREGATE_* or proxy setting would change what it does), only what its Daemon says.
func env(d Daemon) []string {
	return append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}, d.Env...)
}

func (nd *Node) start(bin string, d Daemon) (*Proc, error) { return nd.startTo(bin, d, nil) }

// startTo starts bin with d's arguments; with stdout set, a one-shot run's stdout goes there.
func (nd *Node) startTo(bin string, d Daemon, stdout io.Writer) (*Proc, error) {
	nd.mu.Lock()
	nd.seq++
	p := &Proc{node: nd, d: d, name: fmt.Sprintf("%s.%d", d.Role, nd.seq), done: make(chan struct{}), oneShot: stdout != nil}
	nd.mu.Unlock()
	p.log = filepath.Join(nd.Dir, p.name+".log")
	if d.ReadyFile != "" {
		_ = os.Remove(d.ReadyFile) // a previous run's
	}
	f, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "# %s on %s (%s): %s\n", p.name, nd.Name, nd.IP, d)
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", nd.ns, bin}, d.Args...)...)
	p.cmd.Env = env(d)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if stdout != nil {
		p.cmd.Stdout = stdout
	}
	// Its own process group (a Ctrl-C at the terminal reaches the test, which cleans up), and
	// killed if the test process dies without cleaning up.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("e2e: start %s on %s: %w", p.name, nd.Name, err)
	}
	nd.mu.Lock()
	nd.procs = append(nd.procs, p)
	nd.mu.Unlock()
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// String names the process: role.n@node.
func (p *Proc) String() string { return p.name + "@" + p.node.Name }

// Pid is the daemon's process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// LogPath is the file with the process's output.
func (p *Proc) LogPath() string { return p.log }

// signal sends sig unless the process has exited.
func (p *Proc) signal(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// Stop freezes the process (SIGSTOP): its sockets stay open and nothing answers.
func (p *Proc) Stop() { p.signal(syscall.SIGSTOP) }

// Cont resumes a stopped process.
func (p *Proc) Cont() { p.signal(syscall.SIGCONT) }

// Term sends SIGTERM (a graceful stop), waits up to timeout, then kills. It returns the exit error
// of a process that stopped by itself in time (nil for status 0), or an error saying it was killed.
func (p *Proc) Term(timeout time.Duration) error {
	p.signal(syscall.SIGCONT) // a stopped process would not handle SIGTERM
	p.signal(syscall.SIGTERM)
	if err := p.Wait(timeout); err == nil || !errors.Is(err, errRunning) {
		return err
	}
	p.Kill()
	return fmt.Errorf("e2e: %s did not stop within %v of SIGTERM: killed", p, timeout)
}

var errRunning = errors.New("still running")

// Wait waits up to timeout for the process to exit and returns its exit error (nil for status 0).
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("e2e: %s: %w after %v", p, errRunning, timeout)
	}
}

// Exited says whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// WaitReady polls the daemon's readiness (Daemon.ReadyURL, ReadyFile) until it holds, the process
// exits or ctx ends.
func (p *Proc) WaitReady(ctx context.Context) error {
	start := time.Now()
	for {
		if p.ready(ctx) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("e2e: %s exited before it was ready: %v\n%s", p, p.err, p.Tail(20))
		case <-ctx.Done():
			return fmt.Errorf("e2e: %s not ready after %v: %w\n%s", p, time.Since(start).Round(time.Millisecond), ctx.Err(), p.Tail(20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (p *Proc) ready(ctx context.Context) bool {
	if p.d.ReadyFile != "" {
		if b, err := os.ReadFile(p.d.ReadyFile); err != nil || len(b) == 0 {
			return false
		}
	}
	if p.d.ReadyURL != "" {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, p.d.ReadyURL, nil)
		resp, err := httpClient.Do(req)
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	return true
}

// Tail is the last n lines of the process's log.
func (p *Proc) Tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.ReplaceAll(string(bytes.Join(lines, []byte("\n"))), "\n", "\n    ")
}
