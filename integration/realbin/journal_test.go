//go:build fullsuite

package realbin

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// The delivery journal, its admin API and CLI views, the queue metrics and
// the queue's Caddy events, on bin/caddy.

// journalFields are the fields of a journal entry (seq orders them).
var journalFields = []string{"seq", "time", "delivery_id", "outcome", "reason", "status", "upstream_status", "attempt", "probe",
	"device_return_id", "state", "test", "verified", "key", "duration_ms", "host", "path", "remote_addr", "node"}

// wantEntry is what a journal entry must hold besides time, duration, host
// and remote address, which are checked for every entry.
type wantEntry struct {
	id, outcome, reason string
	status, upstream    int
	attempt             int
	returnID, state     string
	test                bool
	verified            string
	key                 int
	path                string
}

func checkEntry(t *testing.T, g *gateway, e obj, w wantEntry, from, to time.Time) {
	t.Helper()
	if got := sortedKeys(e); strings.Join(got, ",") != strings.Join(sorted(journalFields), ",") {
		t.Errorf("entry fields %v, want %v", got, sorted(journalFields))
	}
	got := wantEntry{e.str("delivery_id"), e.str("outcome"), e.str("reason"), e.num("status"), e.num("upstream_status"),
		e.num("attempt"), e.str("device_return_id"), e.str("state"), e["test"] == true, e.str("verified"), e.num("key"), e.str("path")}
	if got != w {
		t.Errorf("%s entry\n got %+v\nwant %+v", w.outcome, got, w)
	}
	at, err := time.Parse(time.RFC3339Nano, e.str("time"))
	if err != nil || at.Before(from.Add(-time.Second)) || at.After(to.Add(time.Second)) {
		t.Errorf("%s entry: time %q, want RFC 3339 between %s and %s (%v)", w.outcome, e.str("time"), from, to, err)
	}
	if d, ok := e["duration_ms"].(float64); !ok || d < 0 || d > 60_000 {
		t.Errorf("%s entry: duration_ms %v", w.outcome, e["duration_ms"])
	}
	if host := strings.TrimPrefix(g.Base, "http://"); e.str("host") != host {
		t.Errorf("%s entry: host %q, want %q", w.outcome, e.str("host"), host)
	}
	if !regexp.MustCompile(`^127\.0\.0\.1:[0-9]+$`).MatchString(e.str("remote_addr")) {
		t.Errorf("%s entry: remote_addr %q", w.outcome, e.str("remote_addr"))
	}
}

// Every request and attempt is journaled with the fields the issue lists,
// for each outcome; filters select by return, state and outcome, newest
// first, up to limit; and no secret, token, MAC, signature header or body
// appears in the journal, the queue views or the CLI's output.
func TestJournal(t *testing.T) {
	const s1, s2, token = "ssk_journal_first_1a2b3c4d", "ssk_journal_second_5e6f7a8b", "tok_journal_9c0d1e2f"
	storage := t.TempDir()
	app := harness.NewUpstream(t)
	app.Up(t)
	g := startGatewayWith(t, storageGlobal(storage), fmt.Sprintf(`
	reready_verify /j/* {
		secret %[1]s %[2]s
		queue
	}
	reready_verify /tok {
		token %[3]s
		queue
	}
	reready_verify /both {
		secret %[1]s
		token %[3]s
	}
	reready_verify /obs {
		secret %[1]s
		mode observe
	}
	reverse_proxy %[4]s`, s1, s2, token, app.Addr), nil, s1, s2, token)
	admin := adminAddr(t, g)
	from := time.Now()

	const marker = "journal-body-marker-7f3a"
	mk := func(state string) harness.Event {
		ev := harness.NewEvent(state)
		ev.Extra = `, "note": "` + marker + `"`
		return ev
	}
	var sigs []string   // every signature header value sent
	var bodies []string // every body sent
	send := func(d signed, path string) reply {
		sigs, bodies = append(sigs, d.sig), append(bodies, string(d.body))
		return d.post(t, g, path)
	}

	// Forwarded, signed with the second secret; then its repeat.
	fwdEv := mk("pending_return_shipment")
	fwdEv.Test = true
	fwd := signEvent(t, harness.Ruby, s2, fwdEv)
	ok(t, send(fwd, "/j/app"))
	alreadyDelivered(t, send(fwd, "/j/app"))

	// Rejected: forged; and signed with a body that is not a payload.
	forged := signEvent(t, harness.Python, "ssk_journal_attacker", mk("complete"))
	wantStatus(t, send(forged, "/j/app"), http.StatusUnauthorized)
	badBody := []byte(`not json ` + marker)
	badTS := now()
	badSig := harness.OpenSSL.Sign(t, s1, badTS, badBody)
	sigs, bodies = append(sigs, badSig), append(bodies, string(badBody))
	wantStatus(t, g.post(t, "/j/app", badBody, "X-ReReady-Signature-512", badSig), http.StatusBadRequest)

	// Queued (the app fails it live), then redelivered; and one the app
	// refuses on redelivery: dead.
	queued := signEvent(t, harness.OpenSSL, s1, mk("complete"))
	refused := signEvent(t, harness.Ruby, s1, mk("not_returned"))
	app.SetRule(func(q *harness.Request) harness.Answer {
		live := q.Header.Get("X-Reready-Attempt") == ""
		switch {
		case q.ID() == queued.id && live:
			return harness.Answer{Status: 503, Header: map[string]string{"Retry-After": "1"}}
		case q.ID() == refused.id && live:
			return harness.Answer{Status: 502}
		case q.ID() == refused.id:
			return harness.Answer{Status: 400}
		}
		return harness.Answer{}
	})
	wantQueued(t, send(queued, "/j/app"), queued.id)
	wantQueued(t, send(refused, "/j/app"), refused.id)
	waitJournal(t, g, queued.id, "redelivered", queueTimeout)
	waitJournal(t, g, refused.id, "dead", queueTimeout)

	// Token only (queued too: its stored URI must lose the token), both,
	// observed.
	tokEv := mk("complete")
	bodies = append(bodies, string(tokEv.Body()))
	var tokFailed bool
	app.SetRule(func(q *harness.Request) harness.Answer {
		if q.ReturnID() == tokEv.ID && !tokFailed {
			tokFailed = true
			return harness.Answer{Status: 503, Header: map[string]string{"Retry-After": "1"}}
		}
		if q.ID() == refused.id {
			return harness.Answer{Status: 400}
		}
		return harness.Answer{}
	})
	r := g.post(t, "/tok?token="+token+"&x=1", tokEv.Body())
	if r.status != http.StatusAccepted {
		t.Fatalf("token delivery: %d %q, want 202", r.status, r.body)
	}
	tokID := r.header.Get("X-Reready-Delivery-Id")
	if st := readTree(t, storage); strings.Contains(string(st), token) {
		t.Errorf("the token is in the storage")
	}
	tokRec := app.WaitDelivered(t, tokID, queueTimeout)
	if tokRec.URI != "/tok?x=1" {
		t.Errorf("token delivery redelivered to %q, want /tok?x=1", tokRec.URI)
	}
	both := signEvent(t, harness.OpenSSL, s1, mk("failed"))
	sigs, bodies = append(sigs, both.sig), append(bodies, string(both.body))
	ok(t, g.post(t, "/both?token="+token, both.body, "X-ReReady-Signature-512", both.sig))
	observed := signEvent(t, harness.Ruby, "ssk_journal_attacker", mk("complete"))
	ok(t, send(observed, "/obs"))
	to := time.Now()

	t.Run("fields of each outcome", func(t *testing.T) {
		newest := func(id, outcome string) obj {
			t.Helper()
			for _, e := range journalQuery(t, g, "limit=10000") {
				if e.str("delivery_id") == id && e.str("outcome") == outcome {
					return e
				}
			}
			t.Fatalf("no %s entry for %q", outcome, id)
			return nil
		}
		rid := func(ev harness.Event) string { return ev.ID }
		checkEntry(t, g, newest(fwd.id, "forwarded"), wantEntry{fwd.id, "forwarded", "", 200, 200, 1, rid(fwdEv), fwdEv.State, true, "hmac", 2, "/j/app"}, from, to)
		checkEntry(t, g, newest(fwd.id, "replayed"), wantEntry{fwd.id, "replayed", "replay", 200, 0, 0, rid(fwdEv), fwdEv.State, true, "hmac", 2, "/j/app"}, from, to)
		badID := deliveryIDOf(t, badSig)
		checkEntry(t, g, newest(badID, "rejected"), wantEntry{badID, "rejected", "payload_invalid_json", 400, 0, 0, "", "", false, "hmac", 1, "/j/app"}, from, to)
		var forgedEntry obj
		for _, e := range journalQuery(t, g, "outcome=rejected&limit=10000") {
			if e.str("reason") == "signature_mismatch" && e.str("path") == "/j/app" {
				forgedEntry = e
			}
		}
		if forgedEntry == nil {
			t.Fatalf("no rejected signature_mismatch entry")
		}
		checkEntry(t, g, forgedEntry, wantEntry{"", "rejected", "signature_mismatch", 401, 0, 0, "", "", false, "", 0, "/j/app"}, from, to)
		checkEntry(t, g, newest(queued.id, "queued"), wantEntry{queued.id, "queued", "upstream_failed", 202, 503, 1, queued.ev.ID, "complete", false, "hmac", 1, "/j/app"}, from, to)
		checkEntry(t, g, newest(queued.id, "redelivered"), wantEntry{queued.id, "redelivered", "", 200, 200, 2, queued.ev.ID, "complete", false, "hmac", 1, "/j/app"}, from, to)
		checkEntry(t, g, newest(refused.id, "dead"), wantEntry{refused.id, "dead", "app_refused", 400, 400, 2, refused.ev.ID, "not_returned", false, "hmac", 1, "/j/app"}, from, to)
		tokLive := newest(tokID, "queued")
		checkEntry(t, g, tokLive, wantEntry{tokID, "queued", "upstream_failed", 202, 503, 1, tokEv.ID, "complete", false, "token", 0, "/tok"}, from, to)
		checkEntry(t, g, newest(tokID, "redelivered"), wantEntry{tokID, "redelivered", "", 200, 200, 2, tokEv.ID, "complete", false, "token", 0, "/tok"}, from, to)
		checkEntry(t, g, newest(both.id, "forwarded"), wantEntry{both.id, "forwarded", "", 200, 200, 1, both.ev.ID, "failed", false, "hmac,token", 1, "/both"}, from, to)
		var obs obj
		for _, e := range journalQuery(t, g, "outcome=observed") {
			obs = e
		}
		if obs == nil {
			t.Fatalf("no observed entry")
		}
		checkEntry(t, g, obs, wantEntry{"", "observed", "signature_mismatch", 200, 200, 1, "", "", false, "none", 0, "/obs"}, from, to)
	})

	t.Run("filters", func(t *testing.T) {
		all := journalQuery(t, g, "limit=10000")
		for i := 1; i < len(all); i++ {
			if all[i].num("seq") >= all[i-1].num("seq") {
				t.Fatalf("entries not newest first: seq %d after %d", all[i].num("seq"), all[i-1].num("seq"))
			}
		}
		byReturn := journalQuery(t, g, "return_id="+queued.ev.ID)
		if len(byReturn) < 2 {
			t.Errorf("return_id filter: %d entries, want queued and redelivered", len(byReturn))
		}
		for _, e := range byReturn {
			if e.str("device_return_id") != queued.ev.ID {
				t.Errorf("return_id filter let through %v", e)
			}
		}
		byState := journalQuery(t, g, "state=not_returned")
		if len(byState) < 2 {
			t.Errorf("state filter: %d entries", len(byState))
		}
		for _, e := range byState {
			if e.str("state") != "not_returned" {
				t.Errorf("state filter let through %v", e)
			}
		}
		dead := journalQuery(t, g, "outcome=dead")
		if len(dead) != 1 || dead[0].str("delivery_id") != refused.id {
			t.Errorf("outcome=dead: %v", dead)
		}
		combined := journalQuery(t, g, "outcome=queued&return_id="+queued.ev.ID+"&state=complete")
		if len(combined) != 1 || combined[0].str("delivery_id") != queued.id {
			t.Errorf("combined filters: %v", combined)
		}
		two := journalQuery(t, g, "limit=2")
		if len(two) != 2 || two[0].num("seq") != all[0].num("seq") || two[1].num("seq") != all[1].num("seq") {
			t.Errorf("limit=2: %v, want the two newest", two)
		}
		if n := len(journalQuery(t, g, "")); n != min(len(all), 100) {
			t.Errorf("default limit: %d entries of %d", n, len(all))
		}
		for _, q := range []string{"outcome=delivered", "limit=0", "limit=abc", "limit=10001"} {
			status, b := adminDo(t, g, http.MethodGet, "/reready/deliveries?"+q)
			wantJSONError(t, q, status, b, http.StatusBadRequest, "invalid")
		}
	})

	t.Run("no secret, token, MAC, signature or body in any view", func(t *testing.T) {
		forbidden := []string{s1, s2, token, marker}
		for _, s := range sigs {
			forbidden = append(forbidden, s, macOf(s), strings.ToUpper(macOf(s)))
		}
		forbidden = append(forbidden, bodies...)
		views := map[string]string{}
		_, b := adminDo(t, g, http.MethodGet, "/reready/deliveries?limit=10000")
		views["GET /reready/deliveries"] = string(b)
		_, b = adminDo(t, g, http.MethodGet, "/reready/queue")
		views["GET /reready/queue"] = string(b)
		if !strings.Contains(string(b), refused.id) {
			t.Errorf("the dead item is not listed: %s", b)
		}
		for _, args := range [][]string{
			{"reready", "deliveries", "--limit", "10000"},
			{"reready", "deliveries", "--limit", "10000", "--json"},
			{"reready", "queue"},
			{"reready", "queue", "--json"},
		} {
			res := caddyCmd(t, nil, append(args, "--address", admin)...)
			if res.err != nil {
				t.Fatalf("caddy %s: %v\n%s", strings.Join(args, " "), res.err, res.output)
			}
			views["caddy "+strings.Join(args, " ")] = res.output
		}
		if !strings.Contains(views["caddy reready deliveries --limit 10000"], "app_refused") {
			t.Errorf("the deliveries table lacks the dead entry:\n%s", views["caddy reready deliveries --limit 10000"])
		}
		for name, out := range views {
			for _, f := range forbidden {
				if strings.Contains(out, f) {
					t.Errorf("%s shows %q", name, f)
				}
			}
		}
	})
}

// The three queue series move as deliveries are queued, fail, die and are
// delivered: caddy_reready_queue_items{status}, the oldest pending age, and
// caddy_reready_redeliveries_total{result}.
func TestQueueMetrics(t *testing.T) {
	const secret = "ssk_queue_metrics_3b4c5d6e"
	app := harness.NewUpstream(t)
	g := startGatewayWith(t, "\tmetrics", fmt.Sprintf(`
	reready_verify /m/* {
		secret %[1]s
		queue
	}
	reready_verify /short/* {
		secret %[1]s
		queue {
			max_age 2s
		}
	}
	reverse_proxy %[2]s`, secret, app.Addr), nil, secret)
	admin := adminAddr(t, g)
	const (
		items   = "caddy_reready_queue_items"
		oldest  = "caddy_reready_queue_oldest_age_seconds"
		redeliv = "caddy_reready_redeliveries_total"
	)
	key := func(name, status string) string { return seriesKey(name, "status", status) }
	// res sums a result's attempts, probes or not.
	res := func(result string) seriesSum { return seriesSum{redeliv, []string{"result", result}} }
	var last promSeries
	waitSeries := func(what string, cond func(p promSeries) bool) {
		t.Helper()
		harness.WaitUntil(t, what, queueTimeout, func() bool { last, _ = scrape(t, admin); return cond(last) })
	}

	before, raw := scrape(t, admin)
	for _, name := range []string{key(items, "pending"), key(items, "dead"), oldest + "{}"} {
		if v, ok := before[name]; !ok || v != 0 {
			t.Errorf("%s = %v (present %t) before anything was queued, want 0\n%s", name, v, ok, raw)
		}
	}

	long1 := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
	long2 := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("complete"))
	short := signEvent(t, harness.Python, secret, harness.NewEvent("complete"))
	wantQueued(t, long1.post(t, g, "/m/app"), long1.id)
	wantQueued(t, long2.post(t, g, "/m/app"), long2.id)
	wantQueued(t, short.post(t, g, "/short/app"), short.id)

	waitSeries("pending did not reach 3", func(p promSeries) bool { return p[key(items, "pending")] == 3 })
	waitSeries("no failed redelivery counted", func(p promSeries) bool { return p.of(res("failed")) > before.of(res("failed")) })
	waitSeries("the short-lived item did not die", func(p promSeries) bool {
		return p[key(items, "dead")] == 1 && p[key(items, "pending")] == 2 && p.of(res("dead")) == before.of(res("dead"))+1
	})
	age1 := last[oldest+"{}"]
	if age1 < 1 {
		t.Errorf("%s = %v with items pending for over a second", oldest, age1)
	}
	waitSeries("the oldest age did not grow", func(p promSeries) bool { return p[oldest+"{}"] > age1 })

	app.Up(t)
	ok(t, signEvent(t, harness.Ruby, secret, harness.NewEvent("complete")).post(t, g, "/m/app")) // a kick
	waitSeries("the two pending items were not counted delivered", func(p promSeries) bool {
		return p.of(res("delivered")) == before.of(res("delivered"))+2 && p[key(items, "pending")] == 0 && p[oldest+"{}"] == 0
	})
	if last[key(items, "dead")] != 1 {
		t.Errorf("dead = %v after delivering the others, want 1", last[key(items, "dead")])
	}
	if status, b := adminDo(t, g, http.MethodDelete, "/reready/queue/"+short.id); status != http.StatusOK {
		t.Fatalf("DELETE: %d %s", status, b)
	}
	waitSeries("dropping the dead item did not show", func(p promSeries) bool { return p[key(items, "dead")] == 0 })
}

// `caddy reready deliveries --follow` prints new entries as they arrive,
// each once, across reloads through the admin API and `caddy reload`, and
// ends on SIGINT.
func TestDeliveriesFollow(t *testing.T) {
	const secret = "ssk_follow_8f9a0b1c"
	site := `
	reready_verify /hooks/* {
		secret ` + secret + `
	}
	reverse_proxy /hooks/* {{python}}`
	g := startGateway(t, site, nil, secret)
	admin := adminAddr(t, g)

	dir := t.TempDir()
	cmd := exec.Command(caddyBin, "reready", "deliveries", "--follow", "--json", "--address", admin)
	cmd.Dir = dir
	cmd.Env = harness.CaddyEnv(dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr harness.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var mu sync.Mutex
	var lines []string
	readDone := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
		}
		close(readDone)
	}()
	go func() { <-readDone; exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
		}
	})
	printed := func(id string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, l := range lines {
			var d obj
			if json.Unmarshal([]byte(l), &d) == nil && d.str("delivery_id") == id {
				n++
			}
		}
		return n
	}
	deliver := func() string {
		t.Helper()
		d := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
		ok(t, postAfterReload(t, g, "/hooks/app", d.body, "X-ReReady-Signature-512", d.sig))
		harness.WaitUntil(t, "--follow did not print "+d.id, replyTimeout, func() bool { return printed(d.id) > 0 })
		return d.id
	}

	var ids []string
	ids = append(ids, deliver())
	src, err := os.ReadFile(g.Config)
	if err != nil {
		t.Fatal(err)
	}
	reloadWithAPI(t, g, strings.Replace(string(src), "secret "+secret, "secret "+secret+"\n\t\ttolerance 4m", 1))
	ids = append(ids, deliver())
	reloadWithCLI(t, g, strings.Replace(string(src), "secret "+secret, "secret "+secret+"\n\t\ttolerance 3m", 1))
	ids = append(ids, deliver())
	time.Sleep(1500 * time.Millisecond) // another poll: nothing printed twice
	for _, id := range ids {
		if n := printed(id); n != 1 {
			t.Errorf("%s printed %d times, want once", id, n)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("after SIGINT: %v\nstderr:\n%s", err, stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("--follow did not end within 5s of SIGINT")
	}
	if strings.Contains(stderr.String(), "restarted") || strings.Contains(stderr.String(), "waiting for the admin endpoint") {
		t.Errorf("a reload looked like a restart or an outage to --follow:\n%s", stderr.String())
	}
}

// The queue emits reready.queued, reready.dead and reready.redelivered
// through Caddy's events app. Caddy has no built-in event handler, but
// with the global `debug` option the events app logs every emitted event,
// with its data, which shows them on a stock build.
func TestQueueEvents(t *testing.T) {
	const secret = "ssk_queue_events_5d6e7f8a"
	app := harness.NewUpstream(t)
	// From the environment: with debug, Caddy logs the adapted config.
	g := startGatewayWith(t, "\tdebug", queueSite("{env.REREADY_EVENTS_SECRET}", "max_age 2s", app.Addr),
		[]string{"REREADY_EVENTS_SECRET=" + secret}, secret)

	d := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
	wantQueued(t, d.post(t, g, "/hooks/app"), d.id)
	event := func(name string) map[string]any {
		t.Helper()
		var data map[string]any
		harness.WaitUntil(t, "no "+name+" event logged for "+d.id, queueTimeout, func() bool {
			for _, line := range strings.Split(g.Logs.String(), "\n") {
				var l struct {
					Logger, Msg, Name, Origin string
					Data                      map[string]any
				}
				if json.Unmarshal([]byte(line), &l) == nil && l.Logger == "events" && l.Msg == "event" && l.Name == name && l.Data["id"] == d.id {
					if l.Origin != "reready" {
						t.Errorf("%s origin %q, want reready", name, l.Origin)
					}
					data = l.Data
					return true
				}
			}
			return false
		})
		return data
	}
	check := func(name string, data map[string]any, status, attempt float64) {
		t.Helper()
		want := map[string]any{"id": d.id, "device_return_id": d.ev.ID, "state": "complete", "test": false, "status": status, "attempt": attempt}
		for k, v := range want {
			if data[k] != v {
				t.Errorf("%s data %s = %#v, want %#v", name, k, data[k], v)
			}
		}
		b, _ := json.Marshal(data)
		for _, f := range []string{secret, macOf(d.sig), string(d.body), d.sig} {
			if strings.Contains(string(b), f) {
				t.Errorf("%s data holds %q", name, f)
			}
		}
	}
	check("reready.queued", event("reready.queued"), 202, 1)
	dead := event("reready.dead")
	if dead["error"] == "" {
		t.Errorf("reready.dead without an error: %v", dead)
	}
	app.Up(t)
	if status, b := adminDo(t, g, http.MethodPost, "/reready/queue/"+d.id+"/retry"); status != http.StatusOK {
		t.Fatalf("retry: %d %s", status, b)
	}
	rec := app.WaitDelivered(t, d.id, queueTimeout)
	check("reready.redelivered", event("reready.redelivered"), 200, float64(attemptOf(rec)))
}

// A config without any reready_verify still provisions the admin API: it
// answers with empty lists and 404s, and the CLI works against it.
func TestAdminAPIWithoutHandler(t *testing.T) {
	g := startGateway(t, `respond "plain site"`, nil)
	for _, path := range []string{"/reready/queue", "/reready/deliveries"} {
		status, b := adminDo(t, g, http.MethodGet, path)
		var list []any
		if status != http.StatusOK || json.Unmarshal(b, &list) != nil {
			t.Errorf("GET %s: %d %s", path, status, b)
		}
	}
	status, b := adminDo(t, g, http.MethodPost, fmt.Sprintf("/reready/queue/%d-%032x/retry", now(), 1))
	wantJSONError(t, "retry without a queue", status, b, http.StatusNotFound, "no queued delivery")
	res := caddyCmd(t, nil, "reready", "queue", "--address", adminAddr(t, g))
	if res.err != nil || !strings.Contains(res.output, "the queue is empty") {
		t.Errorf("caddy reready queue: %v\n%s", res.err, res.output)
	}
}
