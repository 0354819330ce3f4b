package browser

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// Bounds on every wait, so a broken build, binary or browser fails instead
// of hanging (the harness bounds its own).
const (
	replyTimeout = harness.ReplyTimeout
	testTimeout  = 3 * time.Minute // one test's browser session
	waitTimeout  = 10 * time.Second
)

var (
	caddyBin string // bin/caddy
	chrome   string // the Chromium binary
	authHash string // bcrypt of opsPass for basic_auth
)

// The operator's credentials for the page's basic_auth.
const opsUser, opsPass = "ops", "ops-browser-test-pw"

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	var err error
	if chrome = os.Getenv("CHROME"); chrome == "" {
		for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
			if p, err := exec.LookPath(name); err == nil {
				chrome = p
				break
			}
		}
	}
	var missing []string
	if chrome == "" {
		missing = append(missing, "chromium")
	}
	for _, tool := range []string{"openssl", "python3", "ruby"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fatal("missing %s: run scripts/deps.sh (make test does)", strings.Join(missing, ", "))
	}

	if caddyBin, err = harness.CaddyBin(); err != nil {
		return fatal("%v", err)
	}
	out, err := exec.Command(caddyBin, "hash-password", "--algorithm", "bcrypt", "--bcrypt-cost", "4", "--plaintext", opsPass).Output()
	if err != nil {
		return fatal("caddy hash-password: %v", err)
	}
	authHash = strings.TrimSpace(string(out))
	return m.Run()
}

func fatal(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "browser: "+format+"\n", args...)
	return 1
}

// ---- the gateway ---------------------------------------------------------------

// gateway is a running bin/caddy: reready_verify on /hook in front of an
// app, and the page behind basic_auth at /ops/ (handle) and at /strip/
// (handle_path, which strips the prefix).
type gateway struct{ *harness.Gateway }

// startGateway runs bin/caddy in front of a, with the queue's max_age at
// 1s so that an item dies soon, until the test ends.
func startGateway(t *testing.T, a *harness.Upstream, secret string) *gateway {
	t.Helper()
	return startGatewayMaxAge(t, a, secret, "1s")
}

// startGatewayMaxAge is startGateway with the queue's max_age. Its log
// must hold neither the secret nor the operator's password.
func startGatewayMaxAge(t *testing.T, a *harness.Upstream, secret, maxAge string) *gateway {
	t.Helper()
	return startGatewayGlobal(t, a, secret, maxAge, "")
}

// startGatewayGlobal is startGatewayMaxAge with more global options
// (such as reready { history { ... } }) after the storage.
func startGatewayGlobal(t *testing.T, a *harness.Upstream, secret, maxAge, global string) *gateway {
	t.Helper()
	site := fmt.Sprintf(`	reready_verify /hook {
		secret {env.BROWSER_TEST_SECRET}
		queue {
			max_age %s
		}
	}
	reverse_proxy /hook %s
	handle /ops/* {
		basic_auth {
			%s %s
		}
		reready_ui
	}
	handle_path /strip/* {
		basic_auth {
			%s %s
		}
		reready_ui
	}`, maxAge, a.Addr, opsUser, authHash, opsUser, authHash)
	storage := "\tstorage file_system " + filepath.Join(t.TempDir(), "storage")
	if global != "" {
		storage += "\n" + global
	}
	g := harness.Start(t, caddyBin, 0, storage, site, []string{"BROWSER_TEST_SECRET=" + secret}, secret, opsPass)
	return &gateway{g}
}

// send posts ev signed by s (with the gateway's secret, or another for a
// forgery) and returns the status and the delivery id the gateway gave it.
func (g *gateway) send(t *testing.T, s harness.Signer, secret string, ev harness.Event) (int, string) {
	t.Helper()
	body := ev.Body()
	return g.post(t, body, s.Sign(t, secret, time.Now().Unix(), body))
}

// post sends a body with a signature value as it is (for replays).
func (g *gateway) post(t *testing.T, body []byte, sig string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, g.Base+"/hook", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-ReReady-Signature-512", sig)
	resp, err := (&http.Client{Timeout: replyTimeout}).Do(req)
	if err != nil {
		t.Fatalf("POST /hook: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("X-Reready-Delivery-Id")
}

// queueItem is an item as the admin API lists it.
type queueItem struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

// queue lists the queue through the admin API (no browser involved).
func (g *gateway) queue(t *testing.T) map[string]string {
	t.Helper()
	resp, err := (&http.Client{Timeout: replyTimeout}).Get("http://" + g.Admin + "/reready/queue")
	if err != nil {
		t.Fatalf("admin API: %v", err)
	}
	defer resp.Body.Close()
	var items []queueItem
	if err := json.NewDecoder(resp.Body).Decode(&items); err != nil {
		t.Fatalf("admin API queue: %v", err)
	}
	out := map[string]string{}
	for _, it := range items {
		out[it.ID] = it.Status
	}
	return out
}

// ---- the browser -----------------------------------------------------------------

// newBrowser starts headless Chromium with a fresh profile, sending the
// operator's basic-auth credentials with every request (as a browser that
// signed in does). It fails the test on any script error the pages report.
func newBrowser(t *testing.T, width, height int) context.Context {
	t.Helper()
	ctx := newBareBrowser(t, width, height)
	auth := base64.StdEncoding.EncodeToString([]byte(opsUser + ":" + opsPass))
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
		Headers: network.Headers{"Authorization": "Basic " + auth},
	}); err != nil {
		t.Fatal(err)
	}
	return ctx
}

// newBareBrowser is newBrowser without the credentials: the page must get
// them some other way (in its URL).
func newBareBrowser(t *testing.T, width, height int) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(width, height),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	var mu sync.Mutex
	var problems []string
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithListener(func(ev any) {
		// Runs in the tab's loop: return fast, run no command.
		var msg string
		switch e := ev.(type) {
		case *runtime.EventExceptionThrown:
			msg = "script error: " + e.ExceptionDetails.Text
			if e.ExceptionDetails.Exception != nil {
				msg += " " + e.ExceptionDetails.Exception.Description
			}
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError {
				msg = "console error:"
				for _, a := range e.Args {
					msg += " " + string(a.Value) + a.Description
				}
			}
		}
		if msg != "" {
			mu.Lock()
			problems = append(problems, msg)
			mu.Unlock()
		}
	}))
	ctx, cancelTimeout := context.WithTimeout(ctx, testTimeout)
	t.Cleanup(func() {
		mu.Lock()
		for _, p := range problems {
			t.Errorf("the browser reported: %s", p)
		}
		mu.Unlock()
		cancelTimeout()
		cancelCtx()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting Chromium (%s): %v", chrome, err)
	}
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	return ctx
}

// do runs actions that return nothing.
func do(t *testing.T, ctx context.Context, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatal(err)
	}
}

// open loads url and instruments the page.
func open(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	do(t, ctx, chromedp.Navigate(url))
	instrument(t, ctx)
}

// reload reloads the page as open loads it.
func reload(t *testing.T, ctx context.Context) {
	t.Helper()
	do(t, ctx, chromedp.Reload())
	instrument(t, ctx)
}

// instrument watches for CSP violations, stamps rows as they are added,
// and waits for the page's first update.
func instrument(t *testing.T, ctx context.Context) {
	t.Helper()
	evalJS(t, ctx, `window.__csp = []; document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
		// Stamp each table row with the time (ms since the epoch) it was added.
		new MutationObserver((list) => { const now = Date.now(); for (const m of list) for (const n of m.addedNodes) if (n.nodeName === 'TR') n.__shownAt = now; })
			.observe(document.querySelector('main'), { childList: true, subtree: true });
		true`, nil)
	waitJS(t, ctx, "the page's first update", `document.getElementById('live').className === 'ok'`)
}

// noViolations fails the test if the page reported a CSP violation.
func noViolations(t *testing.T, ctx context.Context) {
	t.Helper()
	var v []string
	evalJS(t, ctx, `window.__csp || []`, &v)
	if len(v) > 0 {
		t.Errorf("Content-Security-Policy violations: %v", v)
	}
}

// evalJS evaluates js in the page and decodes its JSON value into out
// (when out is not nil).
func evalJS(t *testing.T, ctx context.Context, js string, out any) {
	t.Helper()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](js))
	if err != nil {
		t.Fatalf("evaluating %q: %v", js, err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("evaluating %q: decoding %s: %v", js, raw, err)
		}
	}
}

// waitJS polls js (a boolean expression) until it holds, within waitTimeout.
func waitJS(t *testing.T, ctx context.Context, what, js string) time.Duration {
	t.Helper()
	return waitJSFor(t, ctx, what, js, waitTimeout)
}

func waitJSFor(t *testing.T, ctx context.Context, what, js string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if ok {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](pageStateJS))
			t.Fatalf("waited %s for %s; the page: %s", timeout, what, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pageStateJS describes the page for a failure message: its status line,
// its last message, and when it last asked for deliveries.
const pageStateJS = `JSON.stringify({
	live: document.getElementById('live').textContent,
	message: (document.getElementById('action-msg') || {}).textContent,
	hidden: document.hidden,
	polls: performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/deliveries')).slice(-5)
		.map((e) => Math.round(e.startTime) + '+' + Math.round(e.duration) + 'ms'),
	now: Math.round(performance.now()),
})`

// row is a table row as the page shows it: each cell's text by its label,
// and the row's data attributes.
type row map[string]string

// rowsJS returns the rows of a table as objects of label -> text.
const rowsJS = `((sel) => Array.from(document.querySelectorAll(sel + ' tbody tr:not(.empty)')).map((tr) => {
	const o = Object.assign({}, tr.dataset);
	for (const td of tr.cells) o[td.dataset.label] = td.textContent;
	return o;
}))`

func rows(t *testing.T, ctx context.Context, table string) []row {
	t.Helper()
	var out []row
	evalJS(t, ctx, rowsJS+`(`+jsString(table)+`)`, &out)
	return out
}

// jsString quotes s for JavaScript.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// shownAt is when the first row of table whose cells hold want was added
// to the page (0 if none, or added before open stamped rows).
func shownAt(t *testing.T, ctx context.Context, table string, want map[string]string) time.Time {
	t.Helper()
	w, _ := json.Marshal(want)
	var ms int64
	evalJS(t, ctx, `(() => { const all = Array.from(document.querySelectorAll(`+jsString(table+` tbody tr:not(.empty)`)+`));
		const r = (`+rowsJS+`(`+jsString(table)+`));
		const i = r.findIndex((x) => Object.entries(`+string(w)+`).every(([k, v]) => x[k] === v));
		return i < 0 ? 0 : (all[i].__shownAt || 0); })()`, &ms)
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// rowWhere is a JS expression: does table have a row whose cells hold
// these label: text pairs?
func rowWhere(table string, want map[string]string) string {
	w, _ := json.Marshal(want)
	return `(` + rowsJS + `(` + jsString(table) + `)).some((r) => Object.entries(` + string(w) + `).every(([k, v]) => r[k] === v))`
}

func click(t *testing.T, ctx context.Context, js string) {
	t.Helper()
	var ok bool
	evalJS(t, ctx, `(() => { const b = `+js+`; if (!b) return false; b.click(); return true; })()`, &ok)
	if !ok {
		t.Fatalf("nothing to click: %s", js)
	}
}

// buttonJS finds a button in a table row whose cells hold text.
func buttonJS(table, cellText, label string) string {
	return `Array.from(document.querySelectorAll(` + jsString(table+` tbody tr`) + `)).filter((tr) => Array.from(tr.cells).some((td) => td.textContent === ` +
		jsString(cellText) + `)).flatMap((tr) => Array.from(tr.querySelectorAll('button'))).find((b) => b.textContent === ` + jsString(label) + `)`
}
