//go:build fullsuite

package realbin

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// The queue's promises under faults and load, on the real binary: the
// views during a busy drain, max_items under concurrent sends, a resend
// of a dead delivery, probes while the app fails, the journal's order,
// and a storage that fails reads or writes or leaves a lock behind.

// queueSends sends one delivery for each of n new returns, conc at a
// time, and returns them with the status each got.
func queueSends(t *testing.T, g *gateway, secret string, n, conc int) ([]floodDelivery, map[string]int) {
	t.Helper()
	lines := floodLines(t, secret, n, 1)
	// Spread the lines over conc senders, each sending its share in turn.
	shares := make([][]floodDelivery, conc)
	for i, l := range lines {
		shares[i%conc] = append(shares[i%conc], l[0])
	}
	var ds []floodDelivery
	for _, l := range lines {
		ds = append(ds, l[0])
	}
	client := &http.Client{Timeout: 30 * time.Second}
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for _, share := range shares {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, d := range share {
				req, _ := http.NewRequest(http.MethodPost, g.Base+"/hooks/app", strings.NewReader(string(d.body)))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-ReReady-Signature-512", d.sig)
				resp, err := client.Do(req)
				if err != nil {
					t.Errorf("%s: %v", d.id, err)
					return
				}
				resp.Body.Close()
				mu.Lock()
				got[d.id] = resp.StatusCode
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return ds, got
}

// GET /reready/queue during a busy drain never lists fewer items than the
// storage holds: every item still stored after an answer is in it.
func TestQueueViewDuringDrain(t *testing.T) {
	for _, name := range storages {
		t.Run(name, func(t *testing.T) { testQueueViewDuringDrain(t, newBackend(t, name)) })
	}
}

func testQueueViewDuringDrain(t *testing.T, st *backend) {
	const secret = "ssk_queue_view_drain_1a2b3c4d"
	const n = 600
	app := harness.NewUpstream(t)
	g := st.gateway(t, 0, queueSite(secret, "", app.Addr), secret)
	_, got := queueSends(t, g, secret, n, 16)
	for id, s := range got {
		if s != http.StatusAccepted {
			t.Fatalf("%s answered %d with the app down", id, s)
		}
	}
	if stored := st.items(t); len(stored) != n {
		t.Fatalf("%d items stored, want %d", len(stored), n)
	}

	app.SetRule(func(*harness.Request) harness.Answer { return harness.Answer{Delay: 2 * time.Millisecond} })
	app.Up(t)
	ok(t, signEvent(t, harness.Ruby, secret, harness.NewEvent("complete")).post(t, g, "/hooks/app")) // go now
	polls, short := 0, 0
	for {
		listed := map[string]bool{}
		for _, it := range queueList(t, g) {
			listed[it.str("id")] = true
		}
		stored := st.items(t)
		polls++
		var missing []string
		for _, id := range stored {
			if !listed[id] {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			short++
			if short <= 3 {
				t.Errorf("poll %d listed %d items; %d still stored after it were missing, e.g. %s", polls, len(listed), len(missing), missing[0])
			}
		}
		if len(stored) == 0 {
			break
		}
		if polls > 10_000 {
			t.Fatal("the queue did not drain")
		}
	}
	t.Logf("%d polls during the drain of %d items", polls, n)
	if polls < 10 {
		t.Errorf("only %d polls during the drain: too few to tell", polls)
	}
	if short > 0 {
		t.Errorf("%d of %d polls listed fewer items than were stored", short, polls)
	}
}

// validID tells an item's file from file_system's temporary files.
func validID(name string) bool {
	ts, hx, ok := strings.Cut(name, "-")
	return ok && ts != "" && len(hx) == 32
}

// max_items is exact on one gateway under concurrent sends.
func TestQueueMaxItemsUnderConcurrency(t *testing.T) {
	for _, name := range storages {
		t.Run(name, func(t *testing.T) { testQueueMaxItemsUnderConcurrency(t, newBackend(t, name)) })
	}
}

func testQueueMaxItemsUnderConcurrency(t *testing.T, st *backend) {
	const secret = "ssk_queue_max_conc_5d6e7f8a"
	app := harness.NewUpstream(t) // down throughout
	g := st.gateway(t, 0, queueSite(secret, "max_items 100", app.Addr), secret)
	_, got := queueSends(t, g, secret, 300, 30)
	by := map[int]int{}
	for _, s := range got {
		by[s]++
	}
	if by[http.StatusAccepted] != 100 || by[http.StatusServiceUnavailable] != 200 || len(by) != 2 {
		t.Errorf("answers %v, want 100 × 202 and 200 × 503", by)
	}
	if n := len(st.items(t)); n != 100 {
		t.Errorf("%d items stored at max_items 100", n)
	}
}

// A resend of a dead delivery is not "already delivered": it is forwarded,
// and once the app takes it the dead item is gone; the journal says so.
func TestQueueResendOfDeadDelivery(t *testing.T) {
	const secret = "ssk_queue_dead_resend_3e4f5a6b"
	app := harness.NewUpstream(t)
	g := startGateway(t, queueSite(secret, "", app.Addr), nil, secret)
	d := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("complete"))
	wantQueued(t, d.post(t, g, "/hooks/app"), d.id)
	refuse := true
	app.SetRule(func(q *harness.Request) harness.Answer {
		if q.ID() == d.id && refuse {
			return harness.Answer{Status: http.StatusUnprocessableEntity}
		}
		return harness.Answer{}
	})
	app.Up(t)
	ok(t, signEvent(t, harness.Ruby, secret, harness.NewEvent("complete")).post(t, g, "/hooks/app")) // go now
	waitItem(t, g, d.id, "dead", queueTimeout)

	app.Locked(func() { refuse = false })
	r := d.post(t, g, "/hooks/app")
	ok(t, r)
	if n := app.Delivered(d.id); n != 1 {
		t.Fatalf("the app took the resend %d times, want 1", n)
	}
	waitItem(t, g, d.id, "", logTimeout)
	e := waitJournal(t, g, d.id, "forwarded", logTimeout)
	if e.str("reason") != "resent_dead" || e.num("status") != 200 {
		t.Errorf("journal entry of the resend: %v, want forwarded resent_dead 200", e)
	}
	// Delivered now: a further repeat is acknowledged without forwarding.
	if r := d.post(t, g, "/hooks/app"); r.status != http.StatusOK || r.body != "already delivered\n" {
		t.Errorf("repeat after the resend: %d %q", r.status, r.body)
	}
}

// While the app fails, one delivery at a time is tried (a probe), at the
// pace its Retry-After asks, not every queued delivery; a probe that
// succeeds releases the rest. Journal, metrics and the queue view say so.
func TestQueueProbesWhileAppFails(t *testing.T) {
	const secret = "ssk_queue_probes_7b8c9d0e"
	const n = 60
	app := harness.NewUpstream(t)
	g := startGatewayWith(t, "\tmetrics", queueSite(secret, "", app.Addr), nil, secret)
	ds, _ := queueSends(t, g, secret, n, 10)

	var failing = true
	app.SetRule(func(*harness.Request) harness.Answer {
		if failing {
			return harness.Answer{Status: http.StatusServiceUnavailable, Header: map[string]string{"Retry-After": "1"}}
		}
		return harness.Answer{}
	})
	app.Up(t)
	harness.WaitUntil(t, "no probe reached the app", queueTimeout, func() bool { return len(app.Records()) > 0 })
	start := time.Now()
	g.WaitScans(t, 6, queueTimeout)
	time.Sleep(time.Until(start.Add(8 * time.Second)))
	window := time.Since(start)
	tries := len(app.Records())
	t.Logf("%d attempts reached the failing app in %s with %d deliveries queued", tries, window.Round(100*time.Millisecond), n)
	// One probe a second (Retry-After: 1), not one per delivery.
	if max := int(window.Seconds()) + 3; tries > max {
		t.Errorf("%d attempts in %s, want at most %d (one probe at a time)", tries, window.Round(time.Second), max)
	}
	recs := app.Records()
	for i := 1; i < len(recs); i++ {
		if recs[i].At.Before(recs[i-1].Answered) {
			t.Errorf("attempts %d and %d overlapped: more than one probe at a time", i-1, i)
		}
	}
	var probes int
	for _, e := range journalQuery(t, g, "outcome=retrying&limit=10000") {
		if e["probe"] == true {
			probes++
		}
	}
	if probes == 0 {
		t.Error("no failed attempt is journaled as a probe")
	}
	m, _ := scrape(t, adminAddr(t, g))
	if v := m[seriesKey("caddy_reready_redeliveries_total", "result", "failed", "probe", "true")]; v < 1 {
		t.Errorf("caddy_reready_redeliveries_total{result=failed,probe=true} = %v", v)
	}
	items := queueList(t, g)
	if len(items) != n || items[0].str("app_failing_since") == "" || items[0].str("path") != "/hooks/app" {
		t.Errorf("queue view while failing: %d items, first %v; want app_failing_since and path", len(items), items[0])
	}

	// The app recovers: the next probe succeeds and releases the rest.
	app.Locked(func() { failing = false })
	for _, d := range ds {
		app.WaitDelivered(t, d.id, queueTimeout)
	}
	harness.WaitUntil(t, "the queue did not empty", logTimeout, func() bool { return len(queueList(t, g)) == 0 })
}

// The journal is newest first by time as well as by seq: time is when an
// entry was recorded (a request's end), so a slow request that began first
// is listed after a fast one that ended first.
func TestJournalOrderMatchesTime(t *testing.T) {
	const secret = "ssk_journal_order_2c3d4e5f"
	app := harness.NewUpstream(t)
	release := make(chan struct{})
	slow := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
	fast := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("failed"))
	app.SetRule(func(q *harness.Request) harness.Answer {
		if q.ID() == slow.id {
			return harness.Answer{Hold: release}
		}
		return harness.Answer{}
	})
	app.Up(t)
	g := startGateway(t, queueSite(secret, "", app.Addr), nil, secret)
	done := make(chan reply)
	go func() { done <- slow.post(t, g, "/hooks/app") }()
	harness.WaitUntil(t, "the slow delivery did not reach the app", logTimeout, func() bool { return len(app.ForID(slow.id)) == 1 })
	ok(t, fast.post(t, g, "/hooks/app"))
	close(release)
	ok(t, <-done)
	entries := journalQuery(t, g, "limit=10")
	if len(entries) < 2 || entries[0].str("delivery_id") != slow.id || entries[1].str("delivery_id") != fast.id {
		t.Fatalf("journal, newest first: %v; want the slow one (ended last) first", entries)
	}
	for i := 1; i < len(entries); i++ {
		a, b := entries[i-1], entries[i]
		ta, _ := time.Parse(time.RFC3339Nano, a.str("time"))
		tb, _ := time.Parse(time.RFC3339Nano, b.str("time"))
		if a.num("seq") <= b.num("seq") || ta.Before(tb) {
			t.Errorf("entries %d and %d out of order: seq %d, %d; time %s, %s", i-1, i, a.num("seq"), b.num("seq"), ta, tb)
		}
	}
}

// faultyStorageGlobal puts Caddy's storage in dir through the test
// storage whose calls fail as dir/.faults says.
func faultyStorageGlobal(dir string) string { return "\tstorage reready_test_faulty " + dir }

// setFaults lists the storage calls that fail from now on.
func setFaults(t *testing.T, dir string, ops ...string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, ".faults"), []byte(strings.Join(ops, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Storage errors on the live path: a storage that cannot be read refuses
// the delivery with 503 (forwarding could overtake a queued delivery of
// its return); one that cannot be written gives the sender the app's
// failure. Never a 2xx for an event neither delivered nor stored; once
// the storage works, the sender's retry goes through.
func TestQueueStorageFaultsOnTheLivePath(t *testing.T) {
	const secret = "ssk_queue_storage_faults_8f9a0b1c"
	storage := t.TempDir()
	app := harness.NewUpstream(t)
	g := startGatewayBinOn(t, caddyTestBin(t), 0, faultyStorageGlobal(storage), queueSite(secret, "", app.Addr), nil, secret)

	t.Run("reads fail", func(t *testing.T) {
		app.Up(t)
		defer app.Down()
		setFaults(t, storage, "stat", "load", "list")
		defer setFaults(t, storage)
		d := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
		off := logOffset(g)
		r := d.post(t, g, "/hooks/app")
		wantStatus(t, r, http.StatusServiceUnavailable)
		if r.header.Get("Retry-After") == "" {
			t.Error("503 without Retry-After")
		}
		waitLogSince(t, g, off, `"queue: cannot tell whether this return has queued deliveries; refusing with 503 so that its order is kept"`, d.id)
		if n := len(app.ForID(d.id)); n != 0 {
			t.Errorf("the app got the delivery %d times although its return's queue could not be read", n)
		}
		if e := waitJournal(t, g, d.id, "rejected", logTimeout); e.str("reason") != "queue_unavailable" || e.num("status") != 503 {
			t.Errorf("journal entry %v, want rejected queue_unavailable 503", e)
		}
		status, b := adminDo(t, g, http.MethodGet, "/reready/queue")
		wantJSONError(t, "GET /reready/queue with listings failing", status, b, http.StatusServiceUnavailable, "listing")
		setFaults(t, storage)
		ok(t, d.post(t, g, "/hooks/app"))
	})

	t.Run("writes fail", func(t *testing.T) {
		setFaults(t, storage, "store")
		defer setFaults(t, storage)
		d := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("complete"))
		off := logOffset(g)
		wantStatus(t, d.post(t, g, "/hooks/app"), http.StatusBadGateway) // the app is down
		waitLogSince(t, g, off, `"queue: storing a delivery failed; the sender gets the failure"`, d.id)
		if e := waitJournal(t, g, d.id, "forwarded", logTimeout); e.str("reason") != "queue_unavailable" || e.num("status") != 502 {
			t.Errorf("journal entry %v, want forwarded queue_unavailable 502", e)
		}
		app.SetRule(func(q *harness.Request) harness.Answer {
			if q.ID() == d.id {
				return harness.Answer{Status: 503, Body: "the app's own failure"}
			}
			return harness.Answer{}
		})
		app.Up(t)
		defer app.Down()
		r := d.post(t, g, "/hooks/app")
		wantStatus(t, r, http.StatusServiceUnavailable)
		if strings.Contains(r.body, "own failure") {
			t.Errorf("the app's failure body reached the sender: %q", r.body)
		}
		if files := queueFiles(t, storage); len(files) != 0 {
			t.Errorf("items stored although writes fail: %v", files)
		}
		setFaults(t, storage)
		app.SetRule(nil)
		ok(t, d.post(t, g, "/hooks/app"))
		if n := app.Delivered(d.id); n != 1 {
			t.Errorf("delivered %d times, want 1", n)
		}
	})
}

// A lock left behind while the storage was full (an empty lock file: its
// contents could not be written) does not stall the item or the later
// delivery of its return held behind it: it is taken over within about
// 15 s, at error level in the log, and both are delivered in order.
func TestQueueLockLeftByAFullDisk(t *testing.T) {
	const secret = "ssk_queue_full_disk_lock_4a5b6c7d"
	storage := t.TempDir()
	app := harness.NewUpstream(t)
	g := startGatewayBinOn(t, caddyTestBin(t), 0, faultyStorageGlobal(storage), queueSite(secret, "", app.Addr), nil, secret)
	ret := harness.UUID()
	d1 := signEvent(t, harness.Ruby, secret, harness.Event{ID: ret, State: "pending_return_shipment_delivery"})
	d2 := signEvent(t, harness.OpenSSL, secret, harness.Event{ID: ret, State: "complete"})
	wantQueued(t, d1.post(t, g, "/hooks/app"), d1.id)
	wantQueued(t, d2.post(t, g, "/hooks/app"), d2.id)

	// The disk fills up as the worker takes d1's lock for an attempt.
	setFaults(t, storage, "lock")
	lock := filepath.Join(storage, "locks", "reready_verify_queue_items_"+d1.id+".lock")
	off := logOffset(g)
	retry, b := adminDo(t, g, http.MethodPost, "/reready/queue/"+d1.id+"/retry") // due now
	if retry != http.StatusServiceUnavailable {
		t.Logf("retry while locks fail: %d %s", retry, b)
	}
	harness.WaitUntil(t, "no empty lock file was left behind", queueTimeout, func() bool {
		fi, err := os.Stat(lock)
		return err == nil && fi.Size() == 0
	})
	waitLogSince(t, g, off, `"queue: taking the storage lock of a queued delivery failed"`, d1.id)

	// Space is freed and the app is up.
	setFaults(t, storage)
	freed := time.Now()
	app.Up(t)
	ok(t, signEvent(t, harness.Python, secret, harness.NewEvent("complete")).post(t, g, "/hooks/app")) // go now
	r1 := app.WaitDelivered(t, d1.id, 40*time.Second)
	r2 := app.WaitDelivered(t, d2.id, 10*time.Second)
	t.Logf("d1 delivered %s after the storage had room again", r1.At.Sub(freed).Round(100*time.Millisecond))
	if !r2.At.After(r1.Answered) {
		t.Errorf("d2 reached the app before d1 was taken")
	}
	if r1.At.Sub(freed) > 20*time.Second {
		t.Errorf("d1 waited %s for its lock", r1.At.Sub(freed).Round(time.Second))
	}
	waitLogSince(t, g, off, `"queue: took over the storage lock of a queued delivery, left behind by a crash or a failed write"`, d1.id)
	if !slices.ContainsFunc(strings.Split(g.Logs.String()[off:], "\n"), func(l string) bool {
		return strings.Contains(l, `"level":"error"`) && strings.Contains(l, "took over the storage lock") && strings.Contains(l, d1.id)
	}) {
		t.Error("the takeover is not logged at error level")
	}
}
