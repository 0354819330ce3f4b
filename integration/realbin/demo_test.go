//go:build fullsuite

package realbin

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// `make run` as the README tells a newcomer to use it, with the commands it
// prints: scripts/run-demo.sh on free ports with its state in a temporary
// DEMO_DIR and HOME, then from a "second terminal" scripts/demo.sh (what
// make send-events, app-down and app-up run): events reach the app; with
// the app down they are answered 202 and fill the queue, which the admin
// API and the page (with the printed credentials) show; with the app back
// the queue drains and the app prints the same events, each return's in
// order. Nothing is written to HOME.
func TestMakeRunDemo(t *testing.T) {
	dir := t.TempDir()
	home, demoDir := filepath.Join(dir, "home"), filepath.Join(dir, "demo")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	ports := map[string]int{}
	for _, name := range []string{"PORT", "PAGE_PORT", "APP_PORT", "ADMIN_PORT"} {
		p, err := harness.ReservePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[name] = p
	}
	env := []string{"HOME=" + home, "DEMO_DIR=" + demoDir}
	for name, p := range ports {
		env = append(env, fmt.Sprintf("%s=%d", name, p))
	}
	// Go's own directories stay where they are (they derive from HOME
	// otherwise), so the build script finds its caches.
	for _, v := range []string{"GOPATH", "GOCACHE", "GOMODCACHE"} {
		out, err := exec.Command("go", "env", v).Output()
		if err != nil {
			t.Fatalf("go env %s: %v", v, err)
		}
		env = append(env, v+"="+strings.TrimSpace(string(out)))
	}
	withEnv := func() []string {
		var e []string
		for _, kv := range os.Environ() {
			name, _, _ := strings.Cut(kv, "=")
			if !strings.HasPrefix(name, "REREADY_") && !strings.HasPrefix(name, "XDG_") && name != "HOME" && name != "DEMO_DIR" {
				e = append(e, kv)
			}
		}
		return append(e, env...)
	}

	run := exec.Command(filepath.Join(root, "scripts", "run-demo.sh"))
	run.Dir, run.Env = root, withEnv()
	run.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out harness.SyncBuffer
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { run.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-run.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-run.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("make run's output:\n%s", out.String())
		}
	})

	gateway := fmt.Sprintf("127.0.0.1:%d", ports["PORT"])
	if err := waitListening(gateway, exited); err != nil {
		t.Fatalf("the demo gateway: %v\n%s", err, out.String())
	}
	if err := waitListening(fmt.Sprintf("127.0.0.1:%d", ports["PAGE_PORT"]), exited); err != nil {
		t.Fatalf("the demo page: %v\n%s", err, out.String())
	}

	// What it prints: every port, the state directory, the page's URL and
	// credentials, and the commands of the walk-through.
	printed := out.String()
	for _, want := range []string{
		fmt.Sprintf("http://%s/webhooks/reready", gateway),
		fmt.Sprintf("http://127.0.0.1:%d/", ports["PAGE_PORT"]),
		fmt.Sprintf("demo app on 127.0.0.1:%d", ports["APP_PORT"]),
		fmt.Sprintf("--address localhost:%d", ports["ADMIN_PORT"]),
		demoDir, "make send-events", "make app-down", "make app-up",
		"bin/caddy reready replay --since 10m", "bin/caddy reready pause",
	} {
		if !strings.Contains(printed, want) {
			t.Errorf("make run does not print %q", want)
		}
	}
	m := regexp.MustCompile(`user (\S+), password (\S+) `).FindStringSubmatch(printed)
	if m == nil {
		t.Fatalf("make run prints no page credentials:\n%s", printed)
	}
	user, password := m[1], m[2]

	demo := func(cmd string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c := exec.CommandContext(ctx, filepath.Join(root, "scripts", "demo.sh"), cmd)
		c.Dir, c.Env = root, withEnv()
		b, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("scripts/demo.sh %s: %v\n%s", cmd, err, b)
		}
		return string(b)
	}
	answers := func(s string) (n200, n202 int) {
		return strings.Count(s, " 200 OK: "), strings.Count(s, " 202 Accepted: queued for redelivery")
	}

	if n200, _ := answers(demo("events")); n200 != 12 {
		t.Fatalf("make send-events with the app up: %d answers 200, want 12", n200)
	}
	demo("down")
	sent := demo("events")
	if _, n202 := answers(sent); n202 != 12 {
		t.Fatalf("make send-events with the app down: %d answers 202 queued, want 12:\n%s", n202, sent)
	}
	queued := regexp.MustCompile(`(?m)^(demo-\d+-\d) +(\S+) +202 `).FindAllStringSubmatch(sent, -1)

	admin := fmt.Sprintf("http://localhost:%d/reready/queue", ports["ADMIN_PORT"])
	var items []struct{ DeviceReturnID, State string }
	getJSON(t, admin, "", "", &items)
	if len(items) != 12 {
		t.Errorf("the admin API lists %d queued deliveries, want 12", len(items))
	}
	page := fmt.Sprintf("http://127.0.0.1:%d/", ports["PAGE_PORT"])
	var pageItems []json.RawMessage
	getJSON(t, page+"api/queue", user, password, &pageItems)
	if len(pageItems) != 12 {
		t.Errorf("the page's queue lists %d deliveries, want 12", len(pageItems))
	}
	if code := getStatus(t, page, user, password); code != http.StatusOK {
		t.Errorf("the page answers %d with the printed credentials", code)
	}

	demo("up")
	deadline := time.Now().Add(90 * time.Second)
	for {
		getJSON(t, admin, "", "", &items)
		if len(items) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("90 s after make app-up, %d deliveries are still queued", len(items))
		}
		time.Sleep(500 * time.Millisecond)
	}

	// The app printed the queued events once each, each return's in the
	// order they were sent.
	line := regexp.MustCompile(`^#\d+ ReReady: device return (\S+) is (\S+):`)
	printedStates := func() map[string][]string {
		received := map[string][]string{}
		sc := bufio.NewScanner(strings.NewReader(out.String()))
		for sc.Scan() {
			if m := line.FindStringSubmatch(sc.Text()); m != nil {
				received[m[1]] = append(received[m[1]], m[2])
			}
		}
		return received
	}
	received := printedStates()
	want := map[string][]string{}
	for _, q := range queued {
		want[q[1]] = append(want[q[1]], q[2])
	}
	if len(want) != 3 {
		t.Fatalf("queued events of %d returns, want 3", len(want))
	}
	for id, states := range want {
		if got := strings.Join(received[id], " "); got != strings.Join(states, " ") {
			t.Errorf("return %s: the app printed %q, want %q", id, got, strings.Join(states, " "))
		}
	}

	// The printed replay command sends the last 10 minutes again (the demo
	// keeps bodies): each queued return's events arrive once more, in order.
	replay := func(args ...string) string {
		t.Helper()
		c := exec.Command(filepath.Join(root, "bin", "caddy"), append([]string{"reready", "replay", "--since", "10m",
			"--address", fmt.Sprintf("localhost:%d", ports["ADMIN_PORT"])}, args...)...)
		c.Dir, c.Env = root, withEnv()
		b, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("bin/caddy reready replay --since 10m %v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	deadline = time.Now().Add(10 * time.Second) // the history is written every 2 s
	for !strings.Contains(replay("--dry-run"), "24 deliveries selected") {
		if time.Now().After(deadline) {
			t.Fatalf("the history does not hold the demo's 24 deliveries:\n%s", replay("--dry-run"))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if got := replay("--yes"); !strings.Contains(got, "replayed 24 deliveries") {
		t.Fatalf("bin/caddy reready replay --since 10m --yes:\n%s", got)
	}
	deadline = time.Now().Add(90 * time.Second)
	for id, states := range want {
		twice := strings.Join(append(append([]string{}, states...), states...), " ")
		for strings.Join(printedStates()[id], " ") != twice {
			if time.Now().After(deadline) {
				t.Fatalf("return %s after the replay: the app printed %q, want %q", id, strings.Join(printedStates()[id], " "), twice)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}

	// Caddy's storage and config stayed in DEMO_DIR.
	for _, sub := range []string{"data/caddy", "page-password", "demo.env", "caddy.log"} {
		if _, err := os.Stat(filepath.Join(demoDir, sub)); err != nil {
			t.Errorf("DEMO_DIR lacks %s: %v", sub, err)
		}
	}
	// (The go command keeps its telemetry counters in HOME/.config/go:
	// that is Go's, run by the build script, not the demo's.)
	goConfig := filepath.Join(home, ".config", "go")
	filepath.WalkDir(home, func(p string, d os.DirEntry, err error) error {
		switch {
		case p == goConfig:
			return filepath.SkipDir
		case err == nil && p != home && p != filepath.Dir(goConfig):
			t.Errorf("make run wrote %s in HOME", p)
		}
		return nil
	})
}

// getJSON GETs url (with basic auth when user is set) and decodes a 200
// answer into v.
func getJSON(t *testing.T, url, user, password string, v any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", url, err, body)
	}
}

// getStatus GETs url with basic auth and returns the status.
func getStatus(t *testing.T, url, user, password string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.SetBasicAuth(user, password)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
