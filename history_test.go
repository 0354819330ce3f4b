package rereadyverify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"
)

// storeFailStorage is a file_system storage whose Store can fail or hang.
type storeFailStorage struct {
	*certmagic.FileStorage
	fail   atomic.Bool
	stores atomic.Int64
	loads  atomic.Int64
	hold   chan struct{} // when set, Store waits for it to close
}

func (f *storeFailStorage) Load(ctx context.Context, key string) ([]byte, error) {
	f.loads.Add(1)
	return f.FileStorage.Load(ctx, key)
}

func (f *storeFailStorage) Store(ctx context.Context, key string, value []byte) error {
	f.stores.Add(1)
	if f.hold != nil {
		<-f.hold
	}
	if f.fail.Load() {
		return errors.New("storage on fire")
	}
	return f.FileStorage.Store(ctx, key, value)
}

// withNodeName names this process's node for the test.
func withNodeName(t *testing.T, name string) {
	t.Helper()
	saved := nodeName
	nodeName = func() string { return name }
	t.Cleanup(func() { nodeName = saved })
}

// historyApp is testApp with history on in st, its own journal of size
// ring as the process's, node "node-a", its own write counter and a log
// the test can read.
func historyApp(t *testing.T, st certmagic.Storage, cfg HistoryConfig, ring int) (*App, *observer.ObservedLogs) {
	t.Helper()
	historyT = t
	withNodeName(t, "node-a")
	a := testApp(t)
	a.journal = newJournal(ring)
	saved := processJournal
	processJournal = a.journal
	t.Cleanup(func() { processJournal = saved })
	core, logs := observer.New(zapcore.InfoLevel)
	writes := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "history_writes_total"}, []string{"result"})
	a.History = &cfg
	a.history = newHistory(&cfg, st, zap.New(core), a.journal.epoch, writes)
	return a, logs
}

var historyT *testing.T

func writesOf(a *App, result string) int {
	return int(toFloat64(historyT, a.history.writes.WithLabelValues(result)))
}

// historyFiles lists the batch files under dir's history, relative.
func historyFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	root := filepath.Join(dir, "reready_verify", "history")
	_ = filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && strings.HasSuffix(p, ".json") {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	slices.Sort(out)
	return out
}

func readBatch(t *testing.T, dir, rel string) historyBatch {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "reready_verify", "history", rel))
	if err != nil {
		t.Fatal(err)
	}
	var b historyBatch
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	return b
}

var histT0 = time.Date(2026, 3, 4, 10, 58, 0, 0, time.UTC)

// Entries wait in memory until a flush, which writes one object per hour
// of their times (at most historyBatchMax entries each), named by node,
// journal epoch and first seq; App.Stop writes what is left.
func TestHistoryBatchesAndFlush(t *testing.T) {
	dir := t.TempDir()
	a, _ := historyApp(t, &certmagic.FileStorage{Path: dir}, HistoryConfig{}, 100)
	for i := range 5 {
		a.record(journalEntry{at: histT0.Add(time.Duration(i) * time.Minute), outcome: OutcomeForwarded, returnID: rid(fmt.Sprint("ret-", i)), status: 200})
	}
	if files := historyFiles(t, dir); len(files) != 0 {
		t.Fatalf("written before a flush: %v", files)
	}
	a.history.flush(context.Background())
	ep := a.journal.epoch
	want := []string{"2026-03-04T10/node-a-" + ep + "-1.json", "2026-03-04T11/node-a-" + ep + "-3.json"}
	if files := historyFiles(t, dir); !slices.Equal(files, want) {
		t.Fatalf("files %v, want %v", files, want)
	}
	b := readBatch(t, dir, want[1])
	if b.Node != "node-a" || b.Epoch != ep || len(b.Entries) != 3 || b.Entries[0].Seq != 3 || b.Entries[2].DeviceReturnID != "ret-4" || b.Entries[0].Node != "node-a" {
		t.Fatalf("second batch %+v", b)
	}
	if n := writesOf(a, historyWritten); n != 5 {
		t.Fatalf("written %d, want 5", n)
	}
	a.history.flush(context.Background()) // nothing new: nothing written
	if files := historyFiles(t, dir); len(files) != 2 {
		t.Fatalf("an empty flush wrote: %v", files)
	}

	// A full buffer is more than one batch.
	for range historyBatchMax + 1 {
		a.record(journalEntry{at: histT0.Add(5 * time.Minute), outcome: OutcomeRejected})
	}
	a.history.flush(context.Background())
	if files := historyFiles(t, dir); len(files) != 4 {
		t.Fatalf("after %d more entries: %v", historyBatchMax+1, files)
	}

	// Started, the flusher writes on its own; stopped, it writes the rest.
	withLiveApp(t, nil)
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	a.record(journalEntry{at: histT0.Add(2 * time.Hour), outcome: OutcomeForwarded})
	waitFor(t, 2*historyFlushInterval+time.Second, func() bool { return len(historyFiles(t, dir)) == 5 })
	a.record(journalEntry{at: histT0.Add(3 * time.Hour), outcome: OutcomeDead})
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	if files := historyFiles(t, dir); len(files) != 6 || !strings.HasPrefix(files[5], "2026-03-04T13/") {
		t.Fatalf("after Stop: %v", files)
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("timed out")
		}
	}
}

// A storage that hangs or fails costs App.record nothing; failed batches
// are written at a later flush; past the bound the oldest are dropped,
// counted and logged once.
func TestHistoryFailingStorage(t *testing.T) {
	dir := t.TempDir()
	st := &storeFailStorage{FileStorage: &certmagic.FileStorage{Path: dir}, hold: make(chan struct{})}
	a, logs := historyApp(t, st, HistoryConfig{}, 1000)
	a.record(journalEntry{at: histT0, outcome: OutcomeForwarded})
	flushed := make(chan struct{})
	go func() { a.history.flush(context.Background()); close(flushed) }()
	waitFor(t, 5*time.Second, func() bool { return st.stores.Load() == 1 })
	// The flush hangs in Store; the sender's path does not wait on it.
	start := time.Now()
	for range 500 {
		a.record(journalEntry{at: histT0, outcome: OutcomeForwarded})
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("500 records took %v while the storage hung", d)
	}
	select {
	case <-flushed:
		t.Fatal("the flush returned while Store hung")
	default:
	}
	st.fail.Store(true)
	close(st.hold)
	<-flushed
	st.hold = nil
	if got := writesOf(a, historyFailed); got != 1 {
		t.Fatalf("failed %d, want 1", got)
	}
	a.history.flush(context.Background()) // still failing: retried, kept
	a.history.flush(context.Background())
	if files := historyFiles(t, dir); len(files) != 0 || writesOf(a, historyWritten) != 0 {
		t.Fatalf("written while failing: %v", files)
	}
	if n := len(logs.FilterMessageSnippet("writing to storage failed").All()); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}
	st.fail.Store(false)
	a.history.flush(context.Background())
	if got := writesOf(a, historyWritten); got != 501 {
		t.Fatalf("written %d after recovery, want 501", got)
	}
	if files := historyFiles(t, dir); len(files) != 2 { // the first batch, then the 500
		t.Fatalf("files %v", files)
	}

	// Past the bound, the oldest batches go.
	a.history.pendingMax = 10
	st.fail.Store(true)
	for i := range 5 {
		for range 5 {
			a.record(journalEntry{at: histT0.Add(time.Duration(i) * time.Second), outcome: OutcomeRejected})
		}
		a.history.flush(context.Background())
	}
	if got := writesOf(a, historyDropped); got != 15 {
		t.Fatalf("dropped %d, want 15", got)
	}
	if n := len(logs.FilterMessageSnippet("dropping the oldest").All()); n != 1 {
		t.Errorf("drops logged %d times, want once per outage", n)
	}
	st.fail.Store(false)
	a.history.flush(context.Background())
	files := historyFiles(t, dir)
	var seqs []uint64
	for _, f := range files[2:] {
		for _, d := range readBatch(t, dir, f).Entries {
			seqs = append(seqs, d.Seq)
		}
	}
	slices.Sort(seqs)
	if want := []uint64{517, 518, 519, 520, 521, 522, 523, 524, 525, 526}; !slices.Equal(seqs, want) {
		t.Fatalf("kept seqs %v, want the newest 10 %v", seqs, want)
	}
	if n := len(logs.FilterMessageSnippet("works again").All()); n != 2 {
		t.Errorf("recoveries logged %d times, want 2", n)
	}
}

// GET /deliveries with since, until and cursor reads the ring and the
// history together: each entry once (node, epoch, seq), newest first,
// paged through the cursor, another gateway's entries included.
func TestHistoryQueryRange(t *testing.T) {
	dir := t.TempDir()
	st := &certmagic.FileStorage{Path: dir}
	a, _ := historyApp(t, st, HistoryConfig{}, 4)
	withLiveApp(t, a)
	t0 := time.Now().Add(-90 * time.Minute).Truncate(time.Second)
	for i := range 10 {
		a.record(journalEntry{at: t0.Add(time.Duration(i) * time.Minute), outcome: OutcomeForwarded, returnID: rid(fmt.Sprint("a-", i)), status: 200})
	}
	a.history.flush(context.Background()) // all ten in storage, the last four in the ring too
	// Another gateway's entries, with the same sequence numbers.
	other := historyBatch{Node: "node-b", Epoch: "e-b"}
	for i := range 3 {
		other.Entries = append(other.Entries, Delivery{Seq: uint64(i + 1), Time: t0.Add(time.Duration(i)*time.Minute + 30*time.Second).UTC().Format(time.RFC3339Nano),
			Outcome: OutcomeQueued, DeviceReturnID: fmt.Sprint("b-", i)})
	}
	data, _ := json.Marshal(other)
	if err := st.Store(context.Background(), historyPrefix+"/"+hourOf(t0)+"/node-b-e-b-1.json", data); err != nil {
		t.Fatal(err)
	}

	page := func(query string) ([]Delivery, string) {
		t.Helper()
		code, hdr, body := adminDo(t, http.MethodGet, "/reready/deliveries?"+query)
		if code != 200 {
			t.Fatalf("%s: %d %s", query, code, body)
		}
		var ds []Delivery
		if err := json.Unmarshal([]byte(body), &ds); err != nil {
			t.Fatal(err)
		}
		return ds, hdr.Get(nextCursorHeader)
	}
	var all []Delivery
	q := url.Values{"since": {"2h"}, "limit": {"5"}}
	for pages := 0; ; pages++ {
		ds, next := page(q.Encode())
		all = append(all, ds...)
		if next == "" {
			if pages != 2 {
				t.Errorf("%d pages, want 3", pages+1)
			}
			break
		}
		q.Set("cursor", next)
	}
	var got []string
	for _, d := range all {
		got = append(got, d.Node+":"+d.DeviceReturnID)
	}
	want := []string{"node-a:a-9", "node-a:a-8", "node-a:a-7", "node-a:a-6", "node-a:a-5", "node-a:a-4", "node-a:a-3",
		"node-b:b-2", "node-a:a-2", "node-b:b-1", "node-a:a-1", "node-b:b-0", "node-a:a-0"}
	if !slices.Equal(got, want) {
		t.Fatalf("pages gave\n%v\nwant\n%v", got, want)
	}

	// until, an RFC 3339 time (inclusive); filters apply to the history
	// too.
	ds, next := page(url.Values{"until": {t0.Add(90 * time.Second).Format(time.RFC3339)}}.Encode())
	if len(ds) != 4 || next != "" || ds[0].DeviceReturnID != "b-1" || ds[1].DeviceReturnID != "a-1" || ds[3].DeviceReturnID != "a-0" {
		t.Fatalf("until: %+v", ds)
	}
	ds, _ = page("since=" + url.QueryEscape(t0.Format(time.RFC3339)) + "&outcome=queued")
	if len(ds) != 3 || ds[0].Node != "node-b" {
		t.Fatalf("queued since t0: %+v", ds)
	}

	// Without since, until or cursor: the ring, as before, with its node.
	ds, next = page("")
	if len(ds) != 4 || next != "" || ds[0].DeviceReturnID != "a-9" || ds[0].Node != "node-a" {
		t.Fatalf("the ring: %+v", ds)
	}

	for _, tc := range []struct{ query, want string }{
		{"since=yesterday", `invalid since \"yesterday\"`},
		{"until=2026-13-01T00:00:00Z", `invalid until \"2026-13-01T00:00:00Z\"`},
		{"cursor=nope", `invalid cursor \"nope\"`},
		{"since=2h&after=3", "after cannot be combined"},
	} {
		code, _, body := adminDo(t, http.MethodGet, "/reready/deliveries?"+tc.query)
		if code != 400 || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %s, want 400 with %s", tc.query, code, body, tc.want)
		}
	}
}

// The history loses nothing the ring dropped: a range beyond the ring is
// answered from storage. A failed listing is an error, not an empty
// answer.
func TestHistoryQueryListingFails(t *testing.T) {
	dir := t.TempDir()
	a, _ := historyApp(t, &listFailStorage{FileStorage: &certmagic.FileStorage{Path: dir}}, HistoryConfig{}, 4)
	withLiveApp(t, a)
	code, _, body := adminDo(t, http.MethodGet, "/reready/deliveries?since=2h")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "reading the history") {
		t.Fatalf("a failed listing: %d %s", code, body)
	}
}

type listFailStorage struct{ *certmagic.FileStorage }

func (s *listFailStorage) List(context.Context, string, bool) ([]string, error) {
	return nil, errors.New("listing broke")
}

// The sweep removes whole hours past keep, entries and bodies, at most
// once per interval across the fleet, and only under its lock.
func TestHistorySweep(t *testing.T) {
	dir := t.TempDir()
	st := &certmagic.FileStorage{Path: dir}
	a, _ := historyApp(t, st, HistoryConfig{Keep: caddy.Duration(48 * time.Hour)}, 10)
	now := time.Date(2026, 3, 10, 12, 30, 0, 0, time.UTC)
	a.history.now = func() time.Time { return now }
	ctx := context.Background()
	put := func(key string) {
		if err := st.Store(ctx, key, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	old, edge, kept := now.Add(-50*time.Hour), now.Add(-49*time.Hour), now.Add(-48*time.Hour)
	for _, at := range []time.Time{old, edge, kept} {
		put(historyPrefix + "/" + hourOf(at) + "/n-e-1.json")
		put(historyBodiesPrefix + "/" + hourOf(at) + "/1-00000000000000000000000000000000")
	}
	exists := func(at time.Time) (entries, body bool) {
		return st.Exists(ctx, historyPrefix+"/"+hourOf(at)), st.Exists(ctx, historyBodiesPrefix+"/"+hourOf(at))
	}

	// Another holder of the lock: no sweep.
	unlock, ok, err := tryLockStorage(ctx, st, historySweepKey)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if n, err := a.history.sweep(ctx); n != 0 || err != nil {
		t.Fatalf("swept %d (%v) while another held the lock", n, err)
	}
	unlock(ctx, zap.NewNop())

	if n, err := a.history.sweep(ctx); n != 4 || err != nil {
		t.Fatalf("swept %d hours (%v), want 4", n, err)
	}
	for _, at := range []time.Time{old, edge} {
		if e, b := exists(at); e || b {
			t.Errorf("hour %s past keep still there (entries %v, body %v)", hourOf(at), e, b)
		}
	}
	if e, b := exists(kept); !e || !b {
		t.Errorf("hour %s within keep removed", hourOf(kept))
	}
	if !st.Exists(ctx, historyPrefix) {
		t.Error("the history folder itself went")
	}

	// Swept a moment ago (by any gateway): not again yet.
	put(historyPrefix + "/" + hourOf(old) + "/n-e-1.json")
	now = now.Add(time.Minute)
	if n, _ := a.history.sweep(ctx); n != 0 {
		t.Fatalf("swept %d right after a sweep", n)
	}
	now = now.Add(historySweepInterval)
	if n, _ := a.history.sweep(ctx); n != 1 {
		t.Fatalf("swept %d an interval later, want 1", n)
	}
}

// sendSigned serves a signed request with ?token= through h, to next.
func sendSigned(t *testing.T, h *Handler, target string, body []byte, ts time.Time, next caddyhttp.HandlerFunc) error {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, target, bytes.NewReader(body))
	req.Header.Set(verify.SignatureHeader, verify.Sign(testSecret, ts, body))
	req.Header.Set("X-Reready-State", "spoofed")
	ctx := context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	return h.ServeHTTP(httptest.NewRecorder(), req.WithContext(ctx), next)
}

// With bodies, the body the app got is kept byte for byte with the
// trusted headers it got, once per delivery; never the signature header,
// the token or a MAC. GET /deliveries/{id} shows the entries, the body and
// the headers. Without bodies, none is kept.
func TestHistoryBodies(t *testing.T) {
	for _, bodies := range []bool{true, false} {
		t.Run(fmt.Sprint("bodies ", bodies), func(t *testing.T) {
			dir := t.TempDir()
			a, _ := historyApp(t, &certmagic.FileStorage{Path: dir}, HistoryConfig{Bodies: bodies}, 100)
			withLiveApp(t, a)
			const token = "tok-SECRET-7f3a"
			h := &Handler{Secrets: []string{testSecret}, Token: token, Tolerance: caddy.Duration(5 * time.Minute)}
			if err := provision(t, h); err != nil {
				t.Fatal(err)
			}
			h.app = a
			now := time.Now()
			h.now = func() time.Time { return now }
			body := []byte("{\"device_return_id\":\"ret-b\",  \"state\":\"complete\",\"test\":false,\n\"url\":\"https://x.test/é\"}")
			var gotHdr http.Header
			next := func(w http.ResponseWriter, r *http.Request) error {
				gotHdr = r.Header.Clone()
				w.WriteHeader(200)
				return nil
			}
			if err := sendSigned(t, h, "/hook?a=1&token="+token, body, now, next); err != nil {
				t.Fatal(err)
			}
			if err := sendSigned(t, h, "/hook?a=1&token="+token, body, now, next); err != nil { // a replay
				t.Fatal(err)
			}
			a.history.flush(context.Background())
			ds := a.journal.query(DeliveryFilter{})
			if len(ds) != 2 || ds[0].Outcome != OutcomeReplayed {
				t.Fatalf("journal %+v", ds)
			}
			id, _ := parseDeliveryID(ds[1].DeliveryID)

			rec, resp := getDelivery(t, id)
			if len(rec.Entries) != 2 || rec.Entries[0].Outcome != OutcomeForwarded || rec.Entries[1].Outcome != OutcomeReplayed {
				t.Fatalf("entries %+v", rec.Entries)
			}
			stored := storedBodies(t, dir)
			if !bodies {
				if rec.Body != nil || rec.Headers != nil || len(stored) > 0 {
					t.Fatalf("bodies off, yet kept: %s (%q)", resp, stored)
				}
				return
			}
			if !bytes.Contains(stored, []byte(id.String())) {
				t.Fatalf("no body of %s in the storage: %q", id, stored)
			}
			if !bytes.Equal(rec.Body, body) {
				t.Fatalf("body %q, want %q", rec.Body, body)
			}
			want := map[string]string{}
			for k, v := range gotHdr {
				if isReReadyHeader(k) && k != hdrSignature {
					want[k] = v[0]
				}
			}
			if len(want) < 5 || want[hdrState] != "complete" || !mapsEqual(rec.Headers, want) {
				t.Fatalf("headers %v, want %v", rec.Headers, want)
			}
			if rec.URI != "/hook?a=1" {
				t.Errorf("uri %q, want it without the token", rec.URI)
			}
			sig := verify.Sign(testSecret, now, body)
			_, mac, _ := strings.Cut(sig, ",v=")
			for _, secret := range []string{token, mac, "Signature-512", "spoofed"} {
				if bytes.Contains(bytes.ToLower(stored), bytes.ToLower([]byte(secret))) || strings.Contains(resp, secret) {
					t.Errorf("the kept body or the answer holds %q", secret)
				}
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// GET /deliveries/{id} gathers a delivery's entries from the history and
// the ring, oldest first, each once; an unknown or malformed id is 404.
func TestHistoryDeliveryByID(t *testing.T) {
	dir := t.TempDir()
	a, _ := historyApp(t, &certmagic.FileStorage{Path: dir}, HistoryConfig{}, 3)
	withLiveApp(t, a)
	id := deliveryID{t: time.Now().Add(-time.Hour).Unix(), h: [16]byte{1, 2, 3}}
	other := deliveryID{t: id.t, h: [16]byte{9}}
	at := time.Unix(id.t, 0)
	outcomes := []string{OutcomeQueued, OutcomeRetrying, OutcomeRetrying, OutcomeRedelivered}
	for i, o := range outcomes {
		a.record(journalEntry{at: at.Add(time.Duration(i) * time.Minute), id: id, outcome: o, attempt: i + 1})
		a.record(journalEntry{at: at.Add(time.Duration(i)*time.Minute + time.Second), id: other, outcome: OutcomeForwarded})
	}
	a.history.flush(context.Background()) // the ring keeps the last 3 only
	a.record(journalEntry{at: at.Add(10 * time.Minute), id: id, outcome: OutcomeReplayed})

	rec, body := getDelivery(t, id)
	var got []string
	for _, d := range rec.Entries {
		if d.DeliveryID != id.String() || d.Node != "node-a" {
			t.Errorf("entry %+v", d)
		}
		got = append(got, d.Outcome)
	}
	if want := append(outcomes, OutcomeReplayed); !slices.Equal(got, want) {
		t.Fatalf("outcomes %v, want %v", got, want)
	}
	if rec.Body != nil || strings.Contains(body, `"body"`) {
		t.Errorf("a body without bodies on: %s", body)
	}
	for _, p := range []string{"1-00000000000000000000000000000000", "nope", "1-ABCDEF00000000000000000000000000"} {
		code, _, body := adminDo(t, http.MethodGet, "/reready/deliveries/"+p)
		if code != 404 || !strings.Contains(body, "no delivery") {
			t.Errorf("%s: %d %s, want 404", p, code, body)
		}
	}
}

// The history option: keep and bodies, errors naming the value.
func TestHistoryCaddyfile(t *testing.T) {
	parse := func(input string) (*App, error) {
		d := caddyfile.NewTestDispenser(input)
		v, err := parseGlobalOption(d, nil)
		if err != nil {
			return nil, err
		}
		var app App
		if err := json.Unmarshal(v.(httpcaddyfile.App).Value, &app); err != nil {
			t.Fatal(err)
		}
		return &app, nil
	}
	for input, want := range map[string]HistoryConfig{
		"reready {\nhistory\n}":                               {},
		"reready {\nhistory {\nkeep 7d\nbodies\n}\n}":         {Keep: caddy.Duration(7 * 24 * time.Hour), Bodies: true},
		"reready {\njournal_size 5\nhistory {\nkeep 2h\n}\n}": {Keep: caddy.Duration(2 * time.Hour)},
	} {
		app, err := parse(input)
		if err != nil {
			t.Fatalf("%q: %v", input, err)
		}
		if app.History == nil || *app.History != want {
			t.Errorf("%q: %+v, want %+v", input, app.History, want)
		}
	}
	if app, _ := parse("reready {\njournal_size 5\n}"); app.History != nil {
		t.Error("history on without the option")
	}
	for input, want := range map[string]string{
		"reready {\nhistory on\n}":                        `history takes no value, only an optional block; got "on"`,
		"reready {\nhistory {\nkeep soon\n}\n}":           `invalid history keep "soon"`,
		"reready {\nhistory {\nkeep 10m\n}\n}":            `invalid history keep "10m": want at least 1h`,
		"reready {\nhistory {\nbodies yes\n}\n}":          `history bodies takes no value; got "yes"`,
		"reready {\nhistory {\nsize 5\n}\n}":              `unknown history option "size"`,
		"reready {\nhistory {\nkeep 2h\nkeep 3h\n}\n}":    "duplicate history option keep",
		"reready {\nhistory\nhistory\n}":                  "duplicate reready option history",
		"reready {\nhistory {\nkeep\n}\n}":                "wrong argument count",
		"reready {\nqueue_size 1\n}":                      `unknown reready option "queue_size": want journal_size or history`,
		"reready {\nhistory {\nkeep 2h 3h\n}\n}":          `keep takes one value; extra "3h"`,
		"reready {\nhistory {\nkeep -2h\n}\n}":            `invalid history keep "-2h"`,
		"reready {\nhistory {\nkeep 1d\n}\njournal_size}": "",
	} {
		if want == "" {
			continue
		}
		_, err := parse(input)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", input, err, want)
		}
	}
	if err := (&App{History: &HistoryConfig{Keep: caddy.Duration(time.Minute)}}).Validate(); err == nil || !strings.Contains(err.Error(), "history keep 1m0s") {
		t.Errorf("Validate with keep 1m: %v", err)
	}
}

// A delivery queued as it arrived has its body kept from the queue item,
// with the trusted headers the live path would have sent.
func TestHistoryBodiesOfAQueuedDelivery(t *testing.T) {
	rig := newQueueRig(t, QueueConfig{})
	dir := t.TempDir()
	withNodeName(t, "node-a")
	rig.h.app.history = newHistory(&HistoryConfig{Bodies: true}, &certmagic.FileStorage{Path: dir}, zap.NewNop(), rig.h.app.journal.epoch, nil)
	body := eventBody("ret-q", verify.StateComplete)
	resp, err := rig.serve(body, rig.now.Unix(), func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(502); return nil })
	if err != nil || resp.Code != http.StatusAccepted {
		t.Fatalf("%d %v, want 202", resp.Code, err)
	}
	rig.h.app.history.flush(context.Background())
	id, _ := parseDeliveryID(resp.Header().Get(hdrDeliveryID))
	kept, err := findBodies(context.Background(), &certmagic.FileStorage{Path: dir}, []deliveryID{id})
	b := kept[id]
	if err != nil || b == nil {
		t.Fatalf("the body of %s: %v %v", id, b, err)
	}
	if !bytes.Equal(b.Body, body) || b.Headers[hdrState] != verify.StateComplete || b.Headers[hdrDeliveryID] != id.String() ||
		b.Headers[hdrDeviceReturnID] != "ret-q" || b.Headers[hdrVerified] != "hmac" || b.Headers[hdrSignature] != "" || b.URI != "/hook" {
		t.Fatalf("kept %+v", b)
	}
}

// storedBodies is every file under dir's kept bodies, concatenated.
func storedBodies(t *testing.T, dir string) []byte {
	t.Helper()
	var all []byte
	err := filepath.WalkDir(filepath.Join(dir, filepath.FromSlash(historyBodiesPrefix)), func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		all = append(all, data...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// Entries recorded long after a delivery's t (a redelivery hours later, a
// replay days later) are found through the late index; GET
// /deliveries/{id} reads the hours around its t and those the index names,
// not every hour in between.
func TestHistoryDeliveryLateEntries(t *testing.T) {
	dir := t.TempDir()
	st := &storeFailStorage{FileStorage: &certmagic.FileStorage{Path: dir}}
	a, _ := historyApp(t, st, HistoryConfig{}, 1)
	withLiveApp(t, a)
	at := time.Now().Add(-20 * 24 * time.Hour).Truncate(time.Hour).Add(10 * time.Minute)
	id := deliveryID{t: at.Unix(), h: [16]byte{7}}
	steps := []struct {
		after   time.Duration
		outcome string
	}{
		{0, OutcomeQueued}, {30 * time.Minute, OutcomeRetrying}, {5 * time.Hour, OutcomeRedelivered},
		{9 * 24 * time.Hour, OutcomeReplayed}, {19 * 24 * time.Hour, OutcomeReplayed},
	}
	for i, s := range steps {
		a.record(journalEntry{at: at.Add(s.after), id: id, outcome: s.outcome, attempt: i + 1})
		// The hours after hold other deliveries' entries.
		for h := s.after + time.Hour; h < s.after+3*time.Hour; h += time.Hour {
			a.record(journalEntry{at: at.Add(h), id: deliveryID{t: at.Add(h).Unix(), h: [16]byte{8}}, outcome: OutcomeForwarded})
		}
		a.history.flush(context.Background())
	}
	a.record(journalEntry{at: time.Now(), outcome: OutcomeRejected}) // the ring holds none of id's

	st.loads.Store(0)
	rec, _ := getDelivery(t, id)
	var got []string
	for _, d := range rec.Entries {
		got = append(got, d.Outcome)
	}
	want := []string{OutcomeQueued, OutcomeRetrying, OutcomeRedelivered, OutcomeReplayed, OutcomeReplayed}
	if !slices.Equal(got, want) {
		t.Fatalf("outcomes %v, want %v", got, want)
	}
	// The batches of the hours from t to t+2h (2 flushes wrote to each of
	// the 3), the late entries' 3 batches and the 3 objects of the late
	// index: not the other hours'.
	if n := st.loads.Load(); n != 12 {
		t.Errorf("%d objects read for one delivery, want 12", n)
	}
	if n := len(historyFiles(t, dir)); n < 15 {
		t.Fatalf("only %d objects in the history; the test wants many hours", n)
	}
}

// lateStorage lists a history batch before it can be loaded, as Redis's
// storage does (its index is written before the value): Load of ghost
// says not-exist for its first misses tries.
type lateStorage struct {
	*certmagic.FileStorage
	ghost  string
	misses atomic.Int32
}

func (s *lateStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	keys, err := s.FileStorage.List(ctx, prefix, recursive)
	if err == nil && strings.HasPrefix(s.ghost, prefix+"/") && !slices.Contains(keys, s.ghost) {
		keys = append(keys, s.ghost)
	}
	return keys, err
}

func (s *lateStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if key == s.ghost && s.misses.Add(-1) >= 0 {
		return nil, fs.ErrNotExist
	}
	return s.FileStorage.Load(ctx, key)
}

// A batch listed but not yet loadable is read on a second try; one that
// never loads is left out and the answer says it is partial
// (X-Reready-Partial), as do GET /deliveries/{id} and a replay.
func TestHistoryPartialAnswer(t *testing.T) {
	st := &lateStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	a, _ := historyApp(t, st, HistoryConfig{}, 1)
	withLiveApp(t, a)
	at := time.Now().Add(-10 * time.Minute)
	id := deliveryID{t: at.Unix(), h: [16]byte{5}}
	a.record(journalEntry{at: at, id: id, outcome: OutcomeForwarded, status: 200})
	a.history.flush(context.Background())
	a.record(journalEntry{at: time.Now(), outcome: OutcomeRejected}) // out of the ring
	files := historyFiles(t, st.Path)
	if len(files) != 1 {
		t.Fatalf("files %v", files)
	}
	st.ghost = historyPrefix + "/" + filepath.ToSlash(files[0])

	for _, c := range []struct {
		misses  int32
		partial string
	}{{1, ""}, {2, "1"}} {
		st.misses.Store(c.misses)
		code, hdr, body := adminDo(t, http.MethodGet, "/reready/deliveries?since=1h")
		found := strings.Contains(body, id.String())
		if code != 200 || hdr.Get(partialHeader) != c.partial || found != (c.partial == "") {
			t.Errorf("not loadable %d times: %d %s=%q, entry found %v: %s", c.misses, code, partialHeader, hdr.Get(partialHeader), found, body)
		}
		st.misses.Store(c.misses)
		code, hdr, body = adminDo(t, http.MethodGet, "/reready/deliveries/"+id.String())
		if want := map[bool]int{true: 200, false: 404}[c.partial == ""]; code != want || hdr.Get(partialHeader) != c.partial {
			t.Errorf("GET /deliveries/{id}, not loadable %d times: %d %s=%q: %s", c.misses, code, partialHeader, hdr.Get(partialHeader), body)
		}
	}
}

// An entry recorded by a config that has stopped (a request of the old
// config still running after a reload) is written by the running config's
// history, not lost in the stopped one's buffer; a body, refused by the
// stopped history, goes the same way (keepLive).
func TestHistoryAfterStop(t *testing.T) {
	oldDir, newDir := t.TempDir(), t.TempDir()
	old, _ := historyApp(t, &certmagic.FileStorage{Path: oldDir}, HistoryConfig{Bodies: true}, 10)
	cur := testApp(t)
	cur.journal = old.journal
	cur.history = newHistory(&HistoryConfig{Bodies: true}, &certmagic.FileStorage{Path: newDir}, zap.NewNop(), cur.journal.epoch, nil)
	withLiveApp(t, cur)
	old.history.start()
	old.history.stopAndFlush()

	at := time.Now()
	id := deliveryID{t: at.Unix(), h: [16]byte{3}}
	old.record(journalEntry{at: at, id: id, outcome: OutcomeForwarded, status: 200})
	if old.history.keepRecord(&bodyRecord{id: id, body: []byte(`{}`)}) {
		t.Error("the stopped history took a body (keepLive would not hand it to the running config's)")
	}
	cur.history.flush(context.Background())
	if files := historyFiles(t, oldDir); len(files) != 0 {
		t.Errorf("the stopped history wrote %v", files)
	}
	files := historyFiles(t, newDir)
	var entries int
	for _, f := range files {
		if !strings.HasPrefix(f, "bodies") {
			entries += len(readBatch(t, newDir, f).Entries)
		}
	}
	if entries != 1 {
		t.Errorf("the running config's history holds %d entries (%v), want the late one", entries, files)
	}
}

// getDelivery asks GET /reready/deliveries/<id> of the live app and
// decodes its answer, which must be 200; body is the answer as sent.
func getDelivery(t *testing.T, id deliveryID) (rec DeliveryRecord, body string) {
	t.Helper()
	code, _, body := adminDo(t, http.MethodGet, "/reready/deliveries/"+id.String())
	if code != 200 {
		t.Fatalf("GET /deliveries/%s: %d %s", id, code, body)
	}
	if err := json.Unmarshal([]byte(body), &rec); err != nil {
		t.Fatal(err)
	}
	return rec, body
}
