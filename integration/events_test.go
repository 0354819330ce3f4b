package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// eventRecorder is an events handler for this test: Caddy has none built
// in, and the reready app's events go through Caddy's events app.
type eventRecorder struct{}

var recordedEvents = struct {
	sync.Mutex
	list []caddy.Event
}{}

func init() { caddy.RegisterModule(eventRecorder{}) }

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.reready_e2e_recorder", New: func() caddy.Module { return new(eventRecorder) }}
}

func (eventRecorder) UnmarshalCaddyfile(d *caddyfile.Dispenser) error { return nil }

func (eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	recordedEvents.Lock()
	recordedEvents.list = append(recordedEvents.list, e)
	recordedEvents.Unlock()
	return nil
}

// waitEvent waits for an event named name about delivery id.
func waitEvent(t *testing.T, name, id string, timeout time.Duration) caddy.Event {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		recordedEvents.Lock()
		for _, e := range recordedEvents.list {
			if e.Name() == name && e.Data["id"] == id {
				recordedEvents.Unlock()
				return e
			}
		}
		names := []string{}
		for _, e := range recordedEvents.list {
			names = append(names, fmt.Sprintf("%s %v", e.Name(), e.Data["id"]))
		}
		recordedEvents.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no %s event for %s within %s; got %v", name, id, timeout, names)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestE2EQueueEvents runs the queue in-process: a delivery the app fails
// is answered 202 and announced as reready.queued, redelivered once the
// app is back (reready.redelivered), and one that outlives max_age is
// announced as reready.dead.
func TestE2EQueueEvents(t *testing.T) {
	var up atomic.Bool
	var got sync.Map // delivery id -> attempt header
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "down for a deploy")
			return
		}
		got.Store(r.Header.Get("X-Reready-Delivery-Id"), r.Header.Get("X-Reready-Attempt"))
		io.WriteString(w, `{"ok":true}`)
	}))
	defer app.Close()

	tester := caddytest.NewTester(t)
	tester.InitServer(withPorts(fmt.Sprintf(`{
		{{base}}
		storage file_system %[1]s
		events {
			on reready.queued reready_e2e_recorder
			on reready.redelivered reready_e2e_recorder
			on reready.dead reready_e2e_recorder
		}
	}
	%[2]s {
		reready_verify /q {
			secret %[3]s
			queue {
				max_age 3s
			}
		}
		reverse_proxy /q %[4]s
	}`, t.TempDir(), site, secretA, strings.TrimPrefix(app.URL, "http://"))), "caddyfile")

	send := func(body []byte) string {
		t.Helper()
		resp, answer := post(t, tester, "/q", strings.NewReader(string(body)),
			map[string]string{"X-Reready-Signature-512": opensslSign(t, secretA, time.Now().Unix(), body)})
		if resp.StatusCode != http.StatusAccepted || answer != "queued for redelivery\n" {
			t.Fatalf("app down: %d %q, want 202", resp.StatusCode, answer)
		}
		return resp.Header.Get("X-Reready-Delivery-Id")
	}

	first := send(payload("pending_return_shipment", false))
	e := waitEvent(t, "reready.queued", first, 5*time.Second)
	if e.Data["state"] != "pending_return_shipment" || e.Data["attempt"] != 1 || e.Origin().CaddyModule().ID != "reready" {
		t.Fatalf("queued event data %v from %s", e.Data, e.Origin().CaddyModule().ID)
	}
	up.Store(true)
	e = waitEvent(t, "reready.redelivered", first, 10*time.Second)
	if attempt, _ := got.Load(first); attempt != "2" || e.Data["status"] != 200 {
		t.Fatalf("redelivered: app saw attempt %v, event %v", attempt, e.Data)
	}

	up.Store(false)
	doomed := send(payload("complete", false))
	e = waitEvent(t, "reready.dead", doomed, 10*time.Second)
	if e.Data["status"] != 503 || !strings.Contains(fmt.Sprint(e.Data["error"]), "503") {
		t.Fatalf("dead event data %v", e.Data)
	}
	for _, e := range recordedEvents.list {
		for k, v := range e.Data {
			if s := fmt.Sprint(v); strings.Contains(s, secretA) || strings.Contains(s, "down for a deploy") {
				t.Fatalf("event %s data %s = %q shows a secret or the app's body", e.Name(), k, s)
			}
		}
	}

	// The journal on the admin endpoint tells the same story.
	resp, err := http.Get(fmt.Sprintf("http://localhost:%d/reready/deliveries?limit=20", caddytest.Default.AdminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var journal []map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&journal); err != nil {
		t.Fatal(err)
	}
	outcomes := map[string][]string{}
	for _, d := range journal {
		id := fmt.Sprint(d["delivery_id"])
		outcomes[id] = append(outcomes[id], fmt.Sprint(d["outcome"]))
	}
	f := outcomes[first]
	if len(f) < 2 || f[0] != "redelivered" || f[len(f)-1] != "queued" || outcomes[doomed][0] != "dead" {
		t.Fatalf("journal outcomes (newest first): %v", outcomes)
	}
}
