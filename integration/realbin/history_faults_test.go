//go:build fullsuite

package realbin

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// The history option on the real binary, at its edges: `keep` removes the
// hours past it from storage, and a storage that fails while entries are
// written costs the sender nothing and loses nothing once it works again.

const (
	// historyFlush is history.go's historyFlushInterval: how often the
	// buffer is written, and the fixed part of the first sweep's delay.
	historyFlush = 2 * time.Second
	// historyWritesMetric is caddy_reready_history_writes_total.
	historyWritesMetric = "caddy_reready_history_writes_total"
	// The log lines of an outage and its recovery (history.go).
	historyFailedLog    = `"history: writing to storage failed; entries are kept in memory and written again at the next flush"`
	historyRecoveredLog = `"history: writing to storage works again"`
)

// historyKeepGlobal is the storage in dir and the reready app with
// history kept for keep.
func historyKeepGlobal(storage, keep string) string {
	return storage + "\n\treready {\n\t\thistory {\n\t\t\tkeep " + keep + "\n\t\t}\n\t}"
}

// planted is a delivery written into a history as history.go writes it.
type planted struct {
	id, hour string
	body     []byte
}

// plantHistory writes, under a file_system storage root, one batch of
// node holding one forwarded entry at `at`, in the hour folder of `at`,
// and the delivery's body in a pack under bodies/<that hour>/, named with
// the span of ids' t it holds: the layout and the JSON of history.go and
// history_bodies.go (historyBatch, bodyPack, historyBody).
func plantHistory(t *testing.T, root string, at time.Time, node string) planted {
	t.Helper()
	at = at.UTC()
	var h [16]byte
	if _, err := rand.Read(h[:]); err != nil {
		t.Fatal(err)
	}
	p := planted{
		id:   fmt.Sprintf("%d-%s", at.Unix(), hex.EncodeToString(h[:])),
		hour: at.Format("2006-01-02T15"),
		body: harness.NewEvent("complete").Body(),
	}
	batch := map[string]any{
		"node":  node,
		"epoch": "00112233445566ff",
		"entries": []map[string]any{{
			"seq": 7, "time": at.Format(time.RFC3339Nano), "delivery_id": p.id,
			"outcome": "forwarded", "reason": "", "status": 200, "upstream_status": 200,
			"attempt": 1, "probe": false, "device_return_id": harness.UUID(), "state": "complete",
			"test": false, "verified": "signature", "key": 0, "duration_ms": 1.5,
			"host": "127.0.0.1", "path": "/hooks/app", "remote_addr": "127.0.0.1:40000", "node": node,
		}},
	}
	body := map[string]any{
		"delivery_id": p.id, "node": node, "at": at, "body": p.body,
		"host": "127.0.0.1", "uri": "/hooks/app", "tls": false, "server": "srv0", "port": 8080,
		"headers": map[string]string{"X-Reready-Delivery-Id": p.id, "X-Reready-State": "complete"},
	}
	hist := filepath.Join(root, "reready_verify", "history")
	for path, v := range map[string]any{
		filepath.Join(hist, p.hour, node+"-00112233445566ff-7.json"): batch,
		filepath.Join(hist, "bodies", p.hour, fmt.Sprintf("%s-00112233445566ff-1_%d-%d.json", node, at.Unix(), at.Unix())): map[string]any{
			"node": node, "epoch": "00112233445566ff", "bodies": []any{body},
		},
	} {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// exists reports whether path exists.
func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Stat(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// firstSweepDelay is how long after start history.go's sweepLoop first
// sweeps on g: the flush interval plus a second per (a hash of the
// node)%7, node being Caddy's instance id (in g's data directory).
func firstSweepDelay(t *testing.T, g *gateway) time.Duration {
	t.Helper()
	id, err := os.ReadFile(filepath.Join(filepath.Dir(g.Config), "data", "caddy", "instance.uuid"))
	if err != nil {
		t.Fatalf("the gateway's instance id: %v", err)
	}
	var spread uint32
	for _, c := range []byte(strings.TrimSpace(string(id))) {
		spread = spread*31 + uint32(c)
	}
	return historyFlush + time.Duration(spread%7)*time.Second
}

// listed reports whether entries es hold delivery id.
func listed(es []obj, id string) bool { return len(entriesOf(es, id)) > 0 }

// A gateway with `history { keep 1h }` started on a storage holding an
// hour of 3 hours ago and one of this hour removes the old hour's folders
// (entries and bodies) at its first sweep, a few seconds after start, and
// keeps this hour's: GET /reready/deliveries?since=5h no longer lists the
// old entry but lists the recent one.
func TestHistoryKeepSweepsOldHours(t *testing.T) {
	const secret = "ssk_history_keep_sweep_1f2e3d"
	dir := t.TempDir()
	now := time.Now().UTC()
	old := plantHistory(t, dir, now.Add(-3*time.Hour), "planted-old")
	recent := plantHistory(t, dir, now, "planted-recent")
	hist := filepath.Join(dir, "reready_verify", "history")
	oldDirs := []string{filepath.Join(hist, old.hour), filepath.Join(hist, "bodies", old.hour)}
	recentDirs := []string{filepath.Join(hist, recent.hour), filepath.Join(hist, "bodies", recent.hour)}

	app := harness.NewUpstream(t)
	app.Up(t)
	start := time.Now()
	g := startGatewayBinOn(t, caddyBin, 0, historyKeepGlobal(storageGlobal(dir), "1h"), historySite(secret, app.Addr), nil, secret)
	delay := firstSweepDelay(t, g)

	// Before the first sweep, when there is time to look, the old entry
	// is listed: what is planted is what the gateway reads.
	if es := adminList(t, g, "/reready/deliveries?since=5h&limit=10000"); time.Since(start) < delay {
		if !listed(es, old.id) || !listed(es, recent.id) {
			t.Fatalf("before the first sweep, since=5h lists %v; want the planted entries %s and %s", es, old.id, recent.id)
		}
	} else {
		t.Logf("the gateway took %s to answer, past the first sweep's %s: not checking the listing before it", time.Since(start).Round(100*time.Millisecond), delay)
	}

	// The first sweep: delay after the app started (after start), taking
	// the storage lock at once (a fresh storage, no other gateway).
	bound := delay + 5*time.Second
	harness.WaitUntil(t, "the old hour's folders are still there", time.Until(start.Add(bound)), func() bool {
		return !exists(t, oldDirs[0]) && !exists(t, oldDirs[1])
	})
	t.Logf("old hour swept %s after start (first sweep due %s after the app started)", time.Since(start).Round(100*time.Millisecond), delay)
	for _, d := range recentDirs {
		if !exists(t, d) {
			t.Errorf("%s was removed: this hour is within keep", d)
		}
	}
	// The sweep writes its marker after its deletions.
	harness.WaitUntil(t, "no swept marker after the sweep", logTimeout, func() bool { return exists(t, filepath.Join(hist, "swept")) })

	es := adminList(t, g, "/reready/deliveries?since=5h&limit=10000")
	if listed(es, old.id) {
		t.Errorf("since=5h still lists the swept entry %s: %v", old.id, es)
	}
	if got := entriesOf(es, recent.id); len(got) != 1 || got[0].str("node") != "planted-recent" || got[0].str("outcome") != "forwarded" {
		t.Errorf("since=5h lists %v of the recent entry %s, want it once, forwarded, node planted-recent", got, recent.id)
	}
	code, b := adminDo(t, g, http.MethodGet, "/reready/deliveries/"+old.id)
	wantJSONError(t, "the swept delivery", code, b, http.StatusNotFound, "no delivery")
	code, b = adminDo(t, g, http.MethodGet, "/reready/deliveries/"+recent.id)
	var rec struct {
		Entries []obj  `json:"entries"`
		Body    []byte `json:"body"`
	}
	if code != http.StatusOK || json.Unmarshal(b, &rec) != nil || len(rec.Entries) != 1 || !bytes.Equal(rec.Body, recent.body) {
		t.Errorf("GET /reready/deliveries/%s: %d %s; want its entry and its body", recent.id, code, b)
	}
}

// historyWrites reads caddy_reready_history_writes_total{result} of g.
func historyWrites(t *testing.T, g *gateway, result string) float64 {
	t.Helper()
	m, _ := scrape(t, adminAddr(t, g))
	return m[seriesKey(historyWritesMetric, "result", result)]
}

// countLines counts the lines of s holding sub.
func countLines(s, sub string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// While the storage fails every write (a full disk), deliveries are
// answered 200 at once and reach the app; the history's writes fail,
// counted at each flush's try, and the outage is logged once. Once the
// storage has room again, the waiting entries (and bodies) are written,
// the recovery is logged once, and a gateway restarted on the storage
// lists them.
func TestHistoryStorageFailingCostsTheSenderNothing(t *testing.T) {
	const secret = "ssk_history_storage_fails_4c5d6e"
	const n = 6
	dir := t.TempDir()
	app := harness.NewUpstream(t)
	app.Up(t)
	// Without `queue`: only the history (and its sweep) touch the storage.
	global := faultyStorageGlobal(dir) + "\n\treready {\n\t\thistory {\n\t\t\tkeep 2d\n\t\t\tbodies\n\t\t}\n\t}"
	site := historySite(secret, app.Addr)
	bin := caddyTestBin(t)
	g := startGatewayBinOn(t, bin, 0, global, site, nil, secret)

	setFaults(t, dir, "store")
	off := logOffset(g)
	var ds []signed
	for i := range n {
		d := signEvent(t, harness.Signers[i%len(harness.Signers)], secret, harness.NewEvent("complete"))
		sent := time.Now()
		r := d.post(t, g, "/hooks/app")
		took := time.Since(sent)
		if r.status != http.StatusOK {
			t.Fatalf("delivery %d while the storage fails: %d %q", i, r.status, r.body)
		}
		if took > time.Second {
			t.Errorf("delivery %d took %s to answer while the storage fails", i, took.Round(time.Millisecond))
		}
		if got := app.Delivered(d.id); got != 1 {
			t.Errorf("the app got %s %d times, want 1", d.id, got)
		}
		ds = append(ds, d)
	}

	// Each flush tries the waiting batches again, counting them as failed
	// at each try: two tries of all of them within a few flushes.
	harness.WaitUntil(t, "the failed writes were not counted twice", 5*historyFlush+logTimeout, func() bool {
		return historyWrites(t, g, "failed") >= 2*n
	})
	if w := historyWrites(t, g, "written"); w != 0 {
		t.Errorf("%v entries counted written while every write fails", w)
	}
	if tree := readTree(t, dir); bytes.Contains(tree, []byte(ds[0].id)) {
		t.Errorf("%s is in the storage while every write fails", ds[0].id)
	}
	waitLogSince(t, g, off, historyFailedLog, "no space left on device")

	// Room again: what waited is written at the next flush.
	setFaults(t, dir)
	failed := historyWrites(t, g, "failed")
	harness.WaitUntil(t, "the waiting entries were not written", 2*historyFlush+logTimeout, func() bool {
		return historyWrites(t, g, "written") >= n
	})
	harness.WaitUntil(t, "the entries and bodies are not all in the storage", 2*historyFlush+logTimeout, func() bool {
		tree := readTree(t, dir)
		for _, d := range ds {
			if bytes.Count(tree, []byte(`"delivery_id":"`+d.id+`"`)) < 2 { // its entry and its body
				return false
			}
		}
		return true
	})
	waitLogSince(t, g, off, historyRecoveredLog)
	time.Sleep(historyFlush + 500*time.Millisecond) // a flush past the recovery: nothing more fails
	if f := historyWrites(t, g, "failed"); f != failed {
		t.Errorf("failed writes went from %v to %v after the storage recovered", failed, f)
	}
	if w, d := historyWrites(t, g, "written"), historyWrites(t, g, "dropped"); w != n || d != 0 {
		t.Errorf("written %v, dropped %v; want %d written (each entry once), none dropped", w, d, n)
	}
	logs := g.Logs.String()[off:]
	if c := countLines(logs, historyFailedLog); c != 1 {
		t.Errorf("the outage is logged %d times, want once", c)
	}
	if c := countLines(logs, historyRecoveredLog); c != 1 {
		t.Errorf("the recovery is logged %d times, want once", c)
	}
	g.Kill(t)

	g2 := startGatewayBinOn(t, bin, 0, global, site, nil, secret)
	es := historyRange(t, g2)
	for _, d := range ds {
		got := entriesOf(es, d.id)
		if len(got) != 1 || got[0].str("outcome") != "forwarded" {
			t.Errorf("after the restart, since=1h lists %v of %s, want its forwarded entry once", got, d.id)
		}
		code, b := adminDo(t, g2, http.MethodGet, "/reready/deliveries/"+d.id)
		var rec struct {
			Body []byte `json:"body"`
		}
		if code != http.StatusOK || json.Unmarshal(b, &rec) != nil || !bytes.Equal(rec.Body, d.body) {
			t.Errorf("GET /reready/deliveries/%s after the restart: %d %s; want its body", d.id, code, b)
		}
	}
}
