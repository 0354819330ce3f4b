//go:build fullsuite

package realbin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// Helpers of the store-and-forward tests: the site, gateways on a given
// port, the admin API's queue and journal. The app that can be down and
// answers by a rule is the harness's Upstream.

// queueTimeout bounds waits for a redelivery. Backoff steps are 1s, 5s, 15s
// (±20 %); the tests arrange kicks or Retry-After so a wait normally ends
// within a few seconds, and this bound only stops a broken build.
const queueTimeout = 40 * time.Second

// queueSite is a site whose /hooks/* route verifies with secret and queue
// options opts ("" for `queue` with defaults) in front of upstream.
func queueSite(secret, opts, upstream string) string {
	q := "queue"
	if opts != "" {
		q = "queue {\n\t\t\t" + opts + "\n\t\t}"
	}
	return fmt.Sprintf(`
	reready_verify /hooks/* {
		secret %s
		%s
	}
	reverse_proxy /hooks/* %s`, secret, q, upstream)
}

// storageGlobal is the global option putting Caddy's storage in dir.
func storageGlobal(dir string) string { return "\tstorage file_system " + dir }

// startGatewayBinOn is startGatewayWith with the Caddy binary bin, on a
// given port (0 picks a free one). A restarted gateway,
// or another of a fleet, listens where the first did: a queued delivery is
// redelivered through a server on the port it arrived on. Caddy binds with
// SO_REUSEPORT, so two gateways can share the port while both run (the
// kernel spreads connections between them); the readiness probe may then
// be answered by the other one, so this waits for the new one's own
// "serving initial configuration" log line too.
func startGatewayBinOn(t *testing.T, bin string, port int, global, site string, env []string, secrets ...string) *gateway {
	t.Helper()
	g := &gateway{harness.Start(t, bin, port, global, withApps(site), env, secrets...)}
	harness.WaitUntil(t, "the gateway did not log that it serves its configuration", readyTimeout, func() bool {
		return strings.Contains(g.Logs.String(), "serving initial configuration")
	})
	return g
}

// portOf is the port a gateway's site listens on.
func portOf(t *testing.T, g *gateway) int {
	t.Helper()
	_, p, err := net.SplitHostPort(strings.TrimPrefix(g.Base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// ---- admin API ---------------------------------------------------------------

// adminDo sends a request to the gateway's admin endpoint.
func adminDo(t *testing.T, g *gateway, method, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+adminAddr(t, g)+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// obj is a JSON object of the admin API.
type obj map[string]any

func (o obj) str(k string) string { s, _ := o[k].(string); return s }
func (o obj) num(k string) int    { f, _ := o[k].(float64); return int(f) }

// adminList GETs path, wants 200 and a JSON array of objects.
func adminList(t *testing.T, g *gateway, path string) []obj {
	t.Helper()
	status, b := adminDo(t, g, http.MethodGet, path)
	if status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, status, b)
	}
	var out []obj
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, b)
	}
	return out
}

// queueList is GET /reready/queue.
func queueList(t *testing.T, g *gateway) []obj {
	t.Helper()
	return adminList(t, g, "/reready/queue")
}

// queueItem returns the listed item id, or nil.
func queueItem(t *testing.T, g *gateway, id string) obj {
	t.Helper()
	for _, it := range queueList(t, g) {
		if it.str("id") == id {
			return it
		}
	}
	return nil
}

// waitItem waits until item id is listed with status ("" for gone).
func waitItem(t *testing.T, g *gateway, id, status string, timeout time.Duration) obj {
	t.Helper()
	var it obj
	harness.WaitUntil(t, fmt.Sprintf("queued delivery %s is not %q (last seen: %v)", id, status, it), timeout, func() bool {
		it = queueItem(t, g, id)
		if status == "" {
			return it == nil
		}
		return it != nil && it.str("status") == status
	})
	return it
}

// journalQuery is GET /reready/deliveries?query.
func journalQuery(t *testing.T, g *gateway, query string) []obj {
	t.Helper()
	return adminList(t, g, "/reready/deliveries?"+query)
}

// journalFor returns the journal entries of delivery id, oldest first.
func journalFor(t *testing.T, g *gateway, id string) []obj {
	t.Helper()
	var out []obj
	all := journalQuery(t, g, "limit=10000")
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].str("delivery_id") == id {
			out = append(out, all[i])
		}
	}
	return out
}

// waitJournal waits until delivery id has an entry with outcome, and
// returns the newest such entry.
func waitJournal(t *testing.T, g *gateway, id, outcome string, timeout time.Duration) obj {
	t.Helper()
	var found obj
	harness.WaitUntil(t, fmt.Sprintf("no %q journal entry for %s", outcome, id), timeout, func() bool {
		for _, e := range journalFor(t, g, id) {
			if e.str("outcome") == outcome {
				found = e
			}
		}
		return found != nil
	})
	return found
}

// wantJSONError checks an admin API error answer: status and a JSON
// {"error": ...} holding substr.
func wantJSONError(t *testing.T, what string, status int, b []byte, wantStatus int, substr string) {
	t.Helper()
	if status != wantStatus {
		t.Errorf("%s: %d %s, want %d", what, status, b, wantStatus)
		return
	}
	var e struct {
		Error *string `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error == nil {
		t.Errorf("%s: body %s is not a JSON {\"error\": ...}", what, b)
		return
	}
	if !strings.Contains(*e.Error, substr) {
		t.Errorf("%s: error %q does not mention %q", what, *e.Error, substr)
	}
}

// queueFiles lists the item files under a file_system storage root.
func queueFiles(t *testing.T, storage string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(storage, "reready_verify", "queue", "items"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// readTree returns every file's bytes under dir, joined, for "is X stored
// anywhere" checks.
func readTree(t *testing.T, dir string) []byte {
	t.Helper()
	var all bytes.Buffer
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			all.Write(b)
			all.WriteByte('\n')
		}
		return nil
	})
	return all.Bytes()
}
