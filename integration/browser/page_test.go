package browser

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// Real, test, forged, replayed and queued deliveries appear without a
// reload; the counters and the chart count them; filters work and live in
// the URL; a return's timeline shows its states in order, with the
// out-of-order and skipped ones marked; the page also works under a
// prefix-stripping route.
func TestPageLive(t *testing.T) {
	const liveWithin = 2 * time.Second // the bound; the page polls every second
	const secret = "ssk_browser_live_5d6e7f80"
	a := harness.StartUpstream(t)
	g := startGateway(t, a, secret)
	ctx := newBrowser(t, 1280, 1000)
	open(t, ctx, g.Base+"/ops/")
	waitJS(t, ctx, "the empty list", `document.querySelector('#deliveries tbody tr.empty').textContent === 'No deliveries yet.'`)
	evalJS(t, ctx, `window.__sameDocument = 'yes'`, nil)

	// appears waits for a row and checks the page added it within
	// liveWithin of answered, when the gateway answered the delivery.
	appears := func(what string, answered time.Time, want map[string]string) {
		t.Helper()
		waitJS(t, ctx, what, rowWhere("#deliveries", want))
		shown := shownAt(t, ctx, "#deliveries", want)
		took := shown.Sub(answered)
		t.Logf("%s: row added %s after the gateway answered", what, took.Round(10*time.Millisecond))
		if shown.IsZero() || took > liveWithin {
			state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](pageStateJS))
			t.Errorf("%s: the row took %s to show, want at most %s; the page: %s", what, took.Round(10*time.Millisecond), liveWithin, state)
		}
	}

	// A real event signed by Python's hmac: forwarded, the app's 200.
	real := harness.Event{ID: harness.UUID(), State: "pending_return_shipment"}
	realBody := real.Body()
	realSig := harness.Python.Sign(t, secret, time.Now().Unix(), realBody)
	if status, _ := g.post(t, realBody, realSig); status != http.StatusOK {
		t.Fatalf("real event: status %d, want 200", status)
	}
	appears("real event", time.Now(), map[string]string{"outcome": "forwarded", "Return id": real.ID, "State": real.State, "Status": "200", "Test": "—", "Attempt": "1"})

	// A test event signed by Ruby's OpenSSL: flagged as a test.
	test := harness.Event{ID: harness.UUID(), State: "complete", Test: true}
	if status, _ := g.send(t, harness.Ruby, secret, test); status != http.StatusOK {
		t.Fatalf("test event: status %d, want 200", status)
	}
	appears("test event", time.Now(), map[string]string{"outcome": "forwarded", "Return id": test.ID, "Test": "test"})

	// A forgery (openssl with another key): rejected, with its reason.
	forged := harness.Event{ID: harness.UUID(), State: "complete"}
	if status, _ := g.send(t, harness.OpenSSL, "ssk_not_the_secret", forged); status != http.StatusUnauthorized {
		t.Fatalf("forged event: status %d, want 401", status)
	}
	appears("forged event", time.Now(), map[string]string{"outcome": "rejected", "Outcome": "rejectedsignature_mismatch", "Status": "401"})

	// The real event again, byte for byte: replayed.
	if status, _ := g.post(t, realBody, realSig); status != http.StatusOK {
		t.Fatalf("replayed event: status %d, want 200 (already delivered)", status)
	}
	appears("replayed event", time.Now(), map[string]string{"outcome": "replayed", "Return id": real.ID})

	// The app down: the delivery is queued (202), in the list and the queue.
	a.Down()
	queued := harness.Event{ID: harness.UUID(), State: "pending_outbound_shipment"}
	status, queuedID := g.send(t, harness.OpenSSL, secret, queued)
	if status != http.StatusAccepted || queuedID == "" {
		t.Fatalf("event while the app is down: status %d, delivery id %q; want 202 and an id", status, queuedID)
	}
	appears("queued event", time.Now(), map[string]string{"outcome": "queued", "Return id": queued.ID, "Status": "202"})
	waitJS(t, ctx, "the queued item", rowWhere("#queue", map[string]string{"Return id": queued.ID, "Delivery id": queuedID}))
	a.Up(t)

	// Counters: verified = real, test, replayed, queued; one rejected, one
	// queued. The chart draws bars and its legend counts in words.
	waitJS(t, ctx, "the counters", `['verified', 'rejected', 'queued'].map((k) => document.getElementById('c-' + k).textContent).join() === '4,1,1'`)
	waitJS(t, ctx, "the chart", `document.querySelectorAll('#chart svg rect.o-forwarded').length > 0 &&
		document.getElementById('legend').textContent.includes('forwarded 2') &&
		document.getElementById('legend').textContent.includes('rejected 1') &&
		/queued on arrival [1-9]/.test(document.getElementById('legend').textContent) &&
		document.querySelector('#c-queued + .lbl').textContent === 'queued on arrival'`)

	// Filter by outcome: only rejected rows; the filter is in the URL and
	// survives a reload.
	do(t, ctx,
		chromedp.SetValue(chromedp.ID("f-outcome"), "rejected"),
		chromedp.Click(chromedp.CSS(`#filters button[type=submit]`)),
	)
	onlyRejected := `(() => { const r = ` + rowsJS + `('#deliveries'); return r.length === 1 && r[0].outcome === 'rejected'; })()`
	waitJS(t, ctx, "only the rejected row", onlyRejected)
	var search string
	evalJS(t, ctx, `location.search`, &search)
	if search != "?outcome=rejected" {
		t.Errorf("URL query %q after filtering, want ?outcome=rejected", search)
	}
	evalJS(t, ctx, `window.__sameDocument`, &search)
	if search != "yes" {
		t.Fatalf("the page was reloaded while it updated")
	}
	reload(t, ctx)
	waitJS(t, ctx, "the filter after a reload", `document.getElementById('f-outcome').value === 'rejected'`)
	waitJS(t, ctx, "only the rejected row after a reload", onlyRejected)

	// Clear, then filter by return id with the keyboard alone.
	do(t, ctx,
		chromedp.Click(chromedp.ID("f-clear")),
		chromedp.Focus(chromedp.ID("f-return")),
		chromedp.SendKeys(chromedp.ID("f-return"), real.ID+kb.Enter),
	)
	waitJS(t, ctx, "the real event's two rows", `(() => { const r = `+rowsJS+`('#deliveries'); return r.length === 2 && r.every((x) => x['Return id'] === `+jsString(real.ID)+`) && r[0].outcome === 'replayed'; })()`)
	evalJS(t, ctx, `location.search`, &search)
	if search != "?return_id="+real.ID {
		t.Errorf("URL query %q, want ?return_id=%s", search, real.ID)
	}
	do(t, ctx, chromedp.Click(chromedp.ID("f-clear")))

	// A return whose states came out of order: pending_return_shipment,
	// then pending_outbound_shipment, then complete.
	ret := harness.UUID()
	for i, s := range []struct {
		signer harness.Signer
		state  string
	}{{harness.Python, "pending_return_shipment"}, {harness.Ruby, "pending_outbound_shipment"}, {harness.OpenSSL, "complete"}} {
		if status, _ := g.send(t, s.signer, secret, harness.Event{ID: ret, State: s.state}); status != http.StatusOK {
			t.Fatalf("state %d (%s): status %d", i, s.state, status)
		}
	}
	appears("the return's last state", time.Now(), map[string]string{"Return id": ret, "State": "complete"})

	// Open its timeline with the keyboard: focus the return id, press Enter.
	first := `Array.from(document.querySelectorAll('#deliveries button.link')).find((b) => b.textContent === ` + jsString(ret) + `)`
	evalJS(t, ctx, first+`.focus(); document.activeElement.textContent`, &search)
	if search != ret {
		t.Fatalf("focused %q, want the return id button", search)
	}
	do(t, ctx, chromedp.KeyEvent(kb.Enter))
	timeline := `(() => { const sec = document.getElementById('timeline'); if (sec.hidden || document.getElementById('timeline-id').textContent !== ` + jsString(ret) + `) return false;
		const r = ` + rowsJS + `('#timeline-table');
		return r.map((x) => x.State).join('|') === 'pending_return_shipment|pending_outbound_shipment out of order|complete' &&
			r.every((x) => x['App answered'] === '200') &&
			Array.from(document.querySelectorAll('#timeline-path li.missing')).map((li) => li.textContent).join('|') ===
				'pending_outbound_shipment_deliverynot received|pending_return_shipment_deliverynot received'; })()`
	waitJS(t, ctx, "the timeline, in order, with the out-of-order and skipped states marked", timeline)
	evalJS(t, ctx, `location.search`, &search)
	if search != "?timeline="+ret {
		t.Errorf("URL query %q with the timeline open, want ?timeline=%s", search, ret)
	}
	reload(t, ctx)
	waitJS(t, ctx, "the timeline after a reload", timeline)
	do(t, ctx, chromedp.Click(chromedp.ID("timeline-close")))
	waitJS(t, ctx, "the timeline closed", `document.getElementById('timeline').hidden && location.search === ''`)
	noViolations(t, ctx)

	// The same page under handle_path, which strips the route's prefix.
	open(t, ctx, g.Base+"/strip/")
	waitJS(t, ctx, "rows under /strip/", rowWhere("#deliveries", map[string]string{"outcome": "forwarded", "Return id": real.ID}))
	noViolations(t, ctx)
}

// An item made dead, a cross-site attempt to retry it refused, Retry on the
// page, the app back up: delivered. Drop asks first, and a cancel keeps it.
func TestPageQueueRetryDrop(t *testing.T) {
	const secret = "ssk_browser_queue_1a2b3c4d"
	a := harness.StartUpstream(t)
	g := startGateway(t, a, secret)
	ctx := newBrowser(t, 1280, 1000)

	// Responses the browser got, by method and URL, for the cross-site check.
	var mu sync.Mutex
	methods := map[network.RequestID]string{}
	var got []string
	err := chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *network.EventRequestWillBeSent:
			methods[e.RequestID] = e.Request.Method
			got = append(got, "sent "+e.Request.Method+" "+e.Request.URL)
		case *network.EventLoadingFailed:
			got = append(got, fmt.Sprintf("failed %s %s %s", methods[e.RequestID], e.ErrorText, e.BlockedReason))
		case *network.EventResponseReceived:
			got = append(got, fmt.Sprintf("%s %s %d", methods[e.RequestID], e.Response.URL, e.Response.Status))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	open(t, ctx, g.Base+"/ops/")

	a.Down()
	item := harness.Event{ID: harness.UUID(), State: "pending_return_shipment_delivery"}
	status, id := g.send(t, harness.Python, secret, item)
	if status != http.StatusAccepted {
		t.Fatalf("event while the app is down: status %d, want 202", status)
	}
	deadRow := rowWhere("#queue", map[string]string{"Return id": item.ID, "Delivery id": id, "status": "dead", "Next attempt": "none: retry by hand"})
	waitJSFor(t, ctx, "the item dead (max_age 1s)", deadRow, 20*time.Second)
	waitJS(t, ctx, "its dead row in the list", rowWhere("#deliveries", map[string]string{"outcome": "dead", "Return id": item.ID}))

	// A page on another origin (this host, another port) tries to retry it
	// with a form and a fetch, and to drop it with a fetch, while the
	// browser holds the operator's credentials.
	retryURL := g.Base + "/ops/api/queue/" + id + "/retry"
	evil := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><form id="f" method="post" action="%[1]s"></form><script>
Promise.allSettled([
	fetch(%[2]q, {method: 'POST', mode: 'no-cors', credentials: 'include'}),
	fetch(%[3]q, {method: 'DELETE', credentials: 'include'}),
]).then(() => document.getElementById('f').submit());
</script>`, retryURL, retryURL, g.Base+"/ops/api/queue/"+id)
	}))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	evil.Listener = l
	evil.Start()
	defer evil.Close()
	do(t, ctx, chromedp.Navigate(evil.URL))
	waitJS(t, ctx, "the form's answer", `location.href === `+jsString(retryURL)+` && document.body.textContent.includes('same origin')`)
	mu.Lock()
	var sent, refused int
	for _, r := range got {
		switch {
		case r == "sent POST "+retryURL:
			sent++
		case r == "POST "+retryURL+" 403":
			refused++ // the form's; CORP hides the fetch's answer from the page
		case strings.HasPrefix(r, "DELETE "):
			t.Errorf("a cross-site DELETE got an answer: %s", r)
		}
	}
	if sent != 2 || refused != 1 {
		t.Errorf("cross-site POSTs sent %d, answered 403 %d; want 2 (fetch and form), 1 (the form); events: %v", sent, refused, got)
	}
	mu.Unlock()
	if q := g.queue(t); q[id] != "dead" {
		t.Fatalf("after the cross-site attempts the item is %q, want still dead", q[id])
	}

	// Back on the page: Retry. The attempt fails (the app is still down),
	// so it is pending again; the app comes up, a live delivery succeeds,
	// and the item is delivered at once.
	open(t, ctx, g.Base+"/ops/")
	waitJS(t, ctx, "the dead row", deadRow)
	click(t, ctx, buttonJS("#queue", id, "Retry"))
	waitJS(t, ctx, "the retry's message", `document.getElementById('action-msg').textContent === 'Retry asked for delivery `+id+`: it is due now, after any earlier delivery of its return.'`)
	waitJS(t, ctx, "the item pending again", rowWhere("#queue", map[string]string{"Return id": item.ID, "status": "pending"}))
	a.Up(t)
	if status, _ := g.send(t, harness.Ruby, secret, harness.Event{ID: harness.UUID(), State: "complete"}); status != http.StatusOK {
		t.Fatalf("live event with the app up: status %d, want 200", status)
	}
	waitJS(t, ctx, "the redelivered row", rowWhere("#deliveries", map[string]string{"outcome": "redelivered", "Return id": item.ID, "Status": "200"}))
	waitJS(t, ctx, "the item gone from the queue", `!`+rowWhere("#queue", map[string]string{"Delivery id": id}))
	if !a.Received(id) {
		t.Errorf("the app never received delivery %s", id)
	}

	// Drop: the dialog asks; Escape cancels and keeps the item; confirming
	// drops it.
	a.Down()
	drop := harness.Event{ID: harness.UUID(), State: "failed"}
	status, dropID := g.send(t, harness.OpenSSL, secret, drop)
	if status != http.StatusAccepted {
		t.Fatalf("second event while the app is down: status %d, want 202", status)
	}
	waitJS(t, ctx, "the item to drop", rowWhere("#queue", map[string]string{"Delivery id": dropID}))
	click(t, ctx, buttonJS("#queue", dropID, "Drop…"))
	waitJS(t, ctx, "the confirmation", `document.getElementById('drop-dialog').open && document.getElementById('drop-what').textContent.includes(`+jsString(dropID)+`) &&
		document.activeElement === document.getElementById('drop-cancel')`)
	do(t, ctx, chromedp.KeyEvent(kb.Escape))
	waitJS(t, ctx, "the dialog closed", `!document.getElementById('drop-dialog').open`)
	if _, ok := g.queue(t)[dropID]; !ok {
		t.Fatal("the item is gone after cancelling the drop")
	}
	click(t, ctx, buttonJS("#queue", dropID, "Drop…"))
	waitJS(t, ctx, "the confirmation again", `document.getElementById('drop-dialog').open`)
	click(t, ctx, `document.getElementById('drop-confirm')`)
	waitJS(t, ctx, "the item gone", `!`+rowWhere("#queue", map[string]string{"Delivery id": dropID})+
		` && document.getElementById('action-msg').textContent === 'Dropped delivery `+dropID+`.'`)
	if _, ok := g.queue(t)[dropID]; ok {
		t.Fatal("the storage still holds the dropped item")
	}
	a.Up(t)
	noViolations(t, ctx)
}

// A signed payload whose state and return id hold markup is shown as text
// in the list, the queue and the timeline; nothing in it runs.
func TestPageShowsMarkupAsText(t *testing.T) {
	const secret = "ssk_browser_markup_9e8d7c6b"
	a := harness.StartUpstream(t)
	g := startGateway(t, a, secret)
	ctx := newBrowser(t, 1280, 1000)
	open(t, ctx, g.Base+"/ops/")

	rid := `<img src=x onerror="window.__xss=1">` + harness.UUID()
	state := `<script>window.__xss=2</script>`
	if status, _ := g.send(t, harness.Ruby, secret, harness.Event{ID: rid, State: state}); status != http.StatusOK {
		t.Fatalf("markup event: status %d, want 200 (an unknown state is forwarded)", status)
	}
	a.Down()
	queuedState := `<b onmouseover="window.__xss=3">complete</b>`
	if status, _ := g.send(t, harness.OpenSSL, secret, harness.Event{ID: rid, State: queuedState}); status != http.StatusAccepted {
		t.Fatalf("markup event while the app is down: status %d, want 202", status)
	}
	waitJS(t, ctx, "the row, as text", rowWhere("#deliveries", map[string]string{"outcome": "forwarded", "Return id": rid, "State": state}))
	waitJS(t, ctx, "the queued row, as text", rowWhere("#queue", map[string]string{"Return id": rid, "State": queuedState}))
	click(t, ctx, `Array.from(document.querySelectorAll('#deliveries button.link')).find((b) => b.textContent === `+jsString(rid)+`)`)
	waitJS(t, ctx, "the timeline, as text", `document.getElementById('timeline-id').textContent === `+jsString(rid)+` && `+
		rowWhere("#timeline-table", map[string]string{"State": state + " undocumented state"}))

	var n int
	evalJS(t, ctx, `document.querySelectorAll('main img, main script, main b[onmouseover], [onerror]').length`, &n)
	if n != 0 {
		t.Errorf("%d elements made from the payload's markup", n)
	}
	var xss any
	evalJS(t, ctx, `window.__xss === undefined ? null : window.__xss`, &xss)
	if xss != nil {
		t.Errorf("the payload's script ran: window.__xss = %v", xss)
	}
	a.Up(t)
	noViolations(t, ctx)
}

// At a phone's width nothing scrolls sideways, each cell is labelled, and
// the queue's buttons are there.
func TestPagePhoneWidth(t *testing.T) {
	const secret = "ssk_browser_phone_0f1e2d3c"
	a := harness.StartUpstream(t)
	g := startGateway(t, a, secret)
	ctx := newBrowser(t, 1280, 1000)
	do(t, ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	open(t, ctx, g.Base+"/ops/")
	g.send(t, harness.Python, secret, harness.Event{ID: harness.UUID(), State: "complete"})
	a.Down()
	g.send(t, harness.Python, secret, harness.Event{ID: harness.UUID(), State: "pending_outbound_shipment"})
	waitJS(t, ctx, "a queue row", `document.querySelectorAll('#queue tbody tr:not(.empty)').length === 1`)
	var layout struct {
		ScrollWidth, InnerWidth int
		Label                   string
		Buttons                 int
	}
	evalJS(t, ctx, `({
		ScrollWidth: document.documentElement.scrollWidth, InnerWidth: window.innerWidth,
		Label: getComputedStyle(document.querySelector('#queue tbody td'), '::before').content,
		Buttons: Array.from(document.querySelectorAll('#queue tbody button')).filter((b) => b.offsetWidth > 0 && b.getBoundingClientRect().right <= window.innerWidth).length,
	})`, &layout)
	if layout.InnerWidth > 420 {
		t.Fatalf("viewport %d wide, want a phone's", layout.InnerWidth)
	}
	if layout.ScrollWidth > layout.InnerWidth {
		t.Errorf("the page is %d px wide in a %d px viewport", layout.ScrollWidth, layout.InnerWidth)
	}
	if layout.Label != `"Received"` {
		t.Errorf("queue cell label %s, want \"Received\"", layout.Label)
	}
	if layout.Buttons != 3 { // Retry, Drop and the return id
		t.Errorf("%d queue buttons visible within the width, want 3", layout.Buttons)
	}
	a.Up(t)
	noViolations(t, ctx)
}

// Opened with the operator's credentials in its URL
// (http://user:pass@host/ops/, as a bookmark of a page behind basic_auth
// may be), the page fills and its buttons work: the browser refuses a
// fetch of a URL that holds credentials, which a URL relative to such a
// page does.
func TestPageCredentialsInURL(t *testing.T) {
	const secret = "ssk_browser_creds_4b3a2918"
	a := harness.StartUpstream(t)
	g := startGatewayMaxAge(t, a, secret, "1h")
	ctx := newBareBrowser(t, 1280, 1000) // no Authorization header of its own

	fwd := harness.Event{ID: harness.UUID(), State: "complete"}
	if status, _ := g.send(t, harness.Python, secret, fwd); status != http.StatusOK {
		t.Fatalf("event: status %d, want 200", status)
	}
	a.Down()
	status, id := g.send(t, harness.Ruby, secret, harness.Event{ID: harness.UUID(), State: "failed"})
	if status != http.StatusAccepted {
		t.Fatalf("event while the app is down: status %d, want 202", status)
	}

	u, err := url.Parse(g.Base)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(opsUser, opsPass)
	for _, path := range []string{"/ops/", "/strip/"} {
		t.Run(path, func(t *testing.T) {
			open(t, ctx, u.String()+path)
			// The precondition: the document's URL holds the credentials
			// (location.href hides them), so a relative URL is refused.
			var refused string
			evalJS(t, ctx, `(() => { try { new Request('api/queue'); return ''; } catch (e) { return e.message; } })()`, &refused)
			if !strings.Contains(refused, "credentials") {
				t.Fatalf("a relative Request was not refused (%q): the test shows nothing", refused)
			}
			waitJS(t, ctx, "the forwarded row", rowWhere("#deliveries", map[string]string{"outcome": "forwarded", "Return id": fwd.ID}))
			waitJS(t, ctx, "the queued item", rowWhere("#queue", map[string]string{"Delivery id": id}))
			waitJS(t, ctx, "the counters", `document.getElementById('c-verified').textContent === '2'`)
			noViolations(t, ctx)
		})
	}

	// A POST from the page too.
	click(t, ctx, buttonJS("#queue", id, "Retry"))
	waitJS(t, ctx, "the retry's message", `document.getElementById('action-msg').textContent.startsWith('Retry asked for delivery `+id+`')`)
	a.Up(t)
}

// Test events (test: true in the payload, as ReReady's Test button sends)
// are marked in the deliveries table and in the queue. "Hide test events"
// (off by default) hides them from the table, those that arrive later
// too; it lives in the URL.
func TestPageTestEvents(t *testing.T) {
	const secret = "ssk_browser_tests_6c5d4e3f"
	a := harness.StartUpstream(t)
	g := startGatewayMaxAge(t, a, secret, "1h")
	ctx := newBrowser(t, 1280, 1000)
	open(t, ctx, g.Base+"/ops/")

	send := func(ev harness.Event, want int) {
		t.Helper()
		if status, _ := g.send(t, harness.Python, secret, ev); status != want {
			t.Fatalf("%+v: status %d, want %d", ev, status, want)
		}
	}
	real, test := harness.Event{ID: harness.UUID(), State: "complete"}, harness.Event{ID: harness.UUID(), State: "complete", Test: true}
	send(real, http.StatusOK)
	send(test, http.StatusOK)
	marked := func(table, id string) string { // a row of this return marked as a test
		return rowWhere(table, map[string]string{"Return id": id, "test": "true", "Test": "test"})
	}
	unmarked := func(table, id string) string { // a row of this return, not marked
		return `(` + rowsJS + `(` + jsString(table) + `)).some((r) => r['Return id'] === ` + jsString(id) + ` && r.test === undefined && r.Test === '—')`
	}
	waitJS(t, ctx, "the test event marked", marked("#deliveries", test.ID))
	waitJS(t, ctx, "the real event unmarked", unmarked("#deliveries", real.ID))
	var hidden bool
	evalJS(t, ctx, `document.getElementById('f-hide-test').checked`, &hidden)
	if hidden {
		t.Fatal("test events are hidden by default")
	}

	// Hide them: the real row stays, the count says how many are hidden.
	click(t, ctx, `document.getElementById('f-hide-test')`)
	shown := func(id string) string { return rowWhere("#deliveries", map[string]string{"Return id": id}) }
	waitJS(t, ctx, "the test row hidden", `!`+shown(test.ID)+` && `+shown(real.ID)+` && location.search === '?hide_test=1' &&
		document.getElementById('deliveries-count').textContent === '(1 shown, 1 test hidden)'`)

	// One that arrives meanwhile stays hidden; a real one after it shows.
	later, real2 := harness.Event{ID: harness.UUID(), State: "failed", Test: true}, harness.Event{ID: harness.UUID(), State: "failed"}
	send(later, http.StatusOK)
	send(real2, http.StatusOK)
	waitJS(t, ctx, "the later real row", shown(real2.ID))
	waitJS(t, ctx, "the later test row hidden", `!`+shown(later.ID)+` && document.getElementById('deliveries-count').textContent === '(2 shown, 2 test hidden)'`)

	// Kept across a reload; shown again when unticked.
	reload(t, ctx)
	waitJS(t, ctx, "still hidden after a reload", `document.getElementById('f-hide-test').checked && `+shown(real2.ID)+` && !`+shown(test.ID)+` && !`+shown(later.ID))
	click(t, ctx, `document.getElementById('f-hide-test')`)
	waitJS(t, ctx, "test rows back", marked("#deliveries", test.ID)+` && `+marked("#deliveries", later.ID)+` && location.search === ''`)

	// A test event in the queue is marked there too.
	a.Down()
	queued := harness.Event{ID: harness.UUID(), State: "pending_return_shipment", Test: true}
	send(queued, http.StatusAccepted)
	waitJS(t, ctx, "the queued test event marked", marked("#queue", queued.ID))
	a.Up(t)
	noViolations(t, ctx)
}
