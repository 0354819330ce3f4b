package harness

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Gateway is a running Caddy binary.
type Gateway struct {
	Base   string // http://127.0.0.1:port
	Admin  string // 127.0.0.1:port of the admin endpoint, when the Caddyfile names one
	Config string // path of the Caddyfile
	Cmd    *exec.Cmd
	Logs   SyncBuffer // its standard output and error
	Exited chan struct{}
}

// Start writes a Caddyfile (Caddyfile) with a free admin port and a single
// site, http://127.0.0.1:<port>, holding site, and runs bin on it until
// the test ends, as Run does. port 0 picks a free one.
func Start(t testing.TB, bin string, port int, global, site string, env []string, secrets ...string) *Gateway {
	t.Helper()
	admin := FreePort(t)
	if port == 0 {
		port = FreePort(t)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	return Run(t, bin, Caddyfile(admin, global, base, site), base, env, secrets...)
}

// Caddyfile is the Caddyfile of a one-site gateway: its admin endpoint on
// 127.0.0.1, more global options, and the site at base.
func Caddyfile(adminPort int, global, base, site string) string {
	return fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n\tdefault_bind 127.0.0.1\n%s\n}\n\n%s {\n%s\n}\n",
		adminPort, global, base, site)
}

// Run runs the Caddy binary bin on caddyfile, which serves base, in a
// temporary directory (Caddy's config and data directories in it too),
// with env added to CaddyEnv, and waits until base answers. When the test
// ends it kills the process and fails the test if the log holds any of
// secrets, a data race or a panic; a failed test logs the Caddyfile and
// the output.
func Run(t testing.TB, bin, caddyfile, base string, env []string, secrets ...string) *Gateway {
	t.Helper()
	dir := t.TempDir()
	g := &Gateway{Base: base, Config: filepath.Join(dir, "Caddyfile")}
	if m := adminLine.FindStringSubmatch(caddyfile); m != nil {
		g.Admin = m[1]
	}
	if err := os.WriteFile(g.Config, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}

	g.Cmd = exec.Command(bin, "run", "--config", g.Config, "--adapter", "caddyfile")
	g.Cmd.Dir = dir
	g.Cmd.Env = append(CaddyEnv(dir), env...)
	g.Cmd.Stdout, g.Cmd.Stderr = &g.Logs, &g.Logs
	if err := g.Cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	g.Exited = make(chan struct{})
	go func() { g.Cmd.Wait(); close(g.Exited) }()
	t.Cleanup(func() {
		g.Cmd.Process.Kill()
		<-g.Exited
		logs := g.Logs.String()
		for _, s := range secrets {
			if strings.Contains(logs, s) {
				t.Errorf("caddy's log contains the secret or token %q", s)
			}
		}
		if strings.Contains(logs, "WARNING: DATA RACE") || strings.Contains(logs, "panic:") {
			t.Errorf("caddy reported a data race or panicked")
		}
		if t.Failed() {
			t.Logf("Caddyfile:\n%s\ncaddy output:\n%s", caddyfile, logs)
		}
	})
	if err := g.WaitReady(); err != nil {
		t.Fatalf("%s: %v\nCaddyfile:\n%s\noutput:\n%s", bin, err, caddyfile, g.Logs.String())
	}
	return g
}

// adminLine finds the admin endpoint's address in a Caddyfile.
var adminLine = regexp.MustCompile(`(?m)^\s*admin\s+(127\.0\.0\.1:[0-9]+)\s*$`)

// CaddyEnv is the environment for a Caddy process: ours, minus REREADY_*
// and XDG_*, with Caddy's config and data directories under dir.
func CaddyEnv(dir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REREADY_") && !strings.HasPrefix(kv, "XDG_") {
			env = append(env, kv)
		}
	}
	return append(env, "XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "XDG_DATA_HOME="+filepath.Join(dir, "data"))
}

// WaitReady polls until the site answers any HTTP request (ReadyTimeout
// at most), or the process exits.
func (g *Gateway) WaitReady() error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(ReadyTimeout)
	for {
		select {
		case <-g.Exited:
			return fmt.Errorf("exited: %v", g.Cmd.ProcessState)
		default:
		}
		resp, err := client.Get(g.Base + "/__ready")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not answering on %s after %s: %v", g.Base, ReadyTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill ends the gateway with SIGKILL and waits for it.
func (g *Gateway) Kill(t testing.TB) {
	t.Helper()
	if err := g.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	<-g.Exited
}

// Scans is the number of queue scans the gateway's worker has finished:
// the metric caddy_reready_queue_scans_total of its admin endpoint.
func (g *Gateway) Scans(t testing.TB) float64 {
	t.Helper()
	if g.Admin == "" {
		t.Fatalf("the gateway's Caddyfile names no admin endpoint on 127.0.0.1")
	}
	resp, err := (&http.Client{Timeout: ReplyTimeout}).Get("http://" + g.Admin + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v\n%s", resp.StatusCode, err, raw)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if ok && (name == "caddy_reready_queue_scans_total" || name == "caddy_reready_queue_scans_total{}") {
			n, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			return n
		}
	}
	return 0
}

// WaitScans waits (timeout at most) until the gateway's worker has
// finished n more scans than when it was called: whatever a scan would
// have done by then is done. A test that asserts that nothing happened
// waits for this rather than for a while.
func (g *Gateway) WaitScans(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	from := g.Scans(t)
	WaitUntil(t, fmt.Sprintf("the worker did not finish %d scans", n), timeout, func() bool {
		return g.Scans(t) >= from+float64(n)
	})
}
