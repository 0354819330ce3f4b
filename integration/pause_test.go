package integration

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// waitNamed waits for an event named name whose data path is path.
func waitNamed(t *testing.T, name, path string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		recordedEvents.Lock()
		for _, e := range recordedEvents.list {
			if e.Name() == name && e.Data["path"] == path {
				recordedEvents.Unlock()
				return e.Data
			}
		}
		recordedEvents.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no %s event for %s within %s", name, path, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestE2EPauseEvents: a pause through the admin endpoint is announced as
// reready.paused (path, since, by), holds a delivery though the app is
// up, and a resume (reready.resumed) sends it.
func TestE2EPauseEvents(t *testing.T) {
	var got atomic.Int32
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		got.Add(1)
		io.WriteString(w, `{"ok":true}`)
	}))
	defer app.Close()

	tester := caddytest.NewTester(t)
	tester.InitServer(withPorts(fmt.Sprintf(`{
		{{base}}
		storage file_system %[1]s
		events {
			on reready.paused reready_e2e_recorder
			on reready.resumed reready_e2e_recorder
		}
	}
	%[2]s {
		reready_verify /p {
			secret %[3]s
			queue
		}
		reverse_proxy /p %[4]s
	}`, t.TempDir(), site, secretA, strings.TrimPrefix(app.URL, "http://"))), "caddyfile")

	admin := func(path, body string) string {
		t.Helper()
		resp, err := http.Post(fmt.Sprintf("http://localhost:%d%s", caddytest.Default.AdminPort, path), "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
		}
		return string(b)
	}
	admin("/reready/pause", `{"path": "/p"}`)
	d := waitNamed(t, "reready.paused", "/p", 5*time.Second)
	if by, _ := d["by"].(string); !strings.HasPrefix(by, "127.0.0.1:") && !strings.HasPrefix(by, "[::1]:") || d["since"] == "" {
		t.Fatalf("paused event data %v", d)
	}

	body := payload("complete", false)
	resp, answer := post(t, tester, "/p", strings.NewReader(string(body)),
		map[string]string{"X-Reready-Signature-512": opensslSign(t, secretA, time.Now().Unix(), body)})
	if resp.StatusCode != http.StatusAccepted || answer != "queued for redelivery\n" || got.Load() != 0 {
		t.Fatalf("paused: %d %q, the app got %d; want 202 and nothing", resp.StatusCode, answer, got.Load())
	}

	admin("/reready/resume", ``)
	waitNamed(t, "reready.resumed", "*", 5*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for got.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the held delivery did not reach the app after the resume")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
