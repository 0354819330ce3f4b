//go:build fullsuite

package realbin

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// Observe mode and the Prometheus metrics, end to end.

// Client-sent X-ReReady-* headers an observed request carries; none may
// reach the app.
var spoofedObserveHeaders = []string{
	"X-ReReady-State", "complete",
	"X-ReReady-Verified", "hmac",
	"X-ReReady-Reject-Reason", "none",
	"x-reready-device-return-id", "00000000-0000-0000-0000-000000000000",
	"X-ReReady-Test", "false",
	"X-ReReady-Timestamp", "1",
	"X-ReReady-Url", "https://evil.example/",
}

// observed checks that rec is the app's view of a request forwarded in
// observe mode: body intact, X-ReReady-Verified: none and the reason, the
// client's signature header as sent (sig, "" when none was sent), and no
// other X-ReReady-* header (no client-sent one, no parsed-payload one).
func observed(t *testing.T, rec record, body []byte, reason, sig string) {
	t.Helper()
	if got := rec.body(t); string(got) != string(body) {
		t.Errorf("%s app: body differs from what was sent\n got: %q\nwant: %q", rec["app"], got, body)
	}
	if rec["content_length"] != fmt.Sprint(len(body)) {
		t.Errorf("%s app: Content-Length %v, want %d", rec["app"], rec["content_length"], len(body))
	}
	want := map[string]string{
		"x-reready-verified":      "none",
		"x-reready-reject-reason": reason,
	}
	if sig != "" {
		want["x-reready-signature-512"] = sig
	}
	got := rec.rereadyHeaders()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s app: header %s = %q, want %q", rec["app"], k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s app: got header %s: %q; an observed request must carry no other X-ReReady-* header", rec["app"], k, v)
		}
	}
	for _, k := range []string{"state", "device_return_id", "test", "timestamp", "serial_number", "ticket_url", "url"} {
		if rec[k] != nil {
			t.Errorf("%s app: %s = %v for an unverified request, want absent", rec["app"], k, rec[k])
		}
	}
}

// Observe mode forwards what enforce mode would answer 401 or 400, marked
// X-ReReady-Verified: none with the reason, with client X-ReReady-* headers
// removed, no payload headers and no token; 405, 408 and 413 still apply;
// verified requests are marked as usual and replay still applies to them.
func TestObserveMode(t *testing.T) {
	const secret, token = "ssk_observe_0a1b2c3d", "tok_observe_4e5f6a"
	g := startGateway(t, `
	reready_verify /obs {
		secret `+secret+`
		mode observe
		max_body 1KiB
		body_timeout 1s
	}
	reready_verify /obs-token {
		token `+token+`
		mode observe
	}
	reverse_proxy /obs {{python}}
	reverse_proxy /obs-token {{node}}`, nil, secret, token)

	type sent struct {
		body []byte
		sig  string // "" sends no signature header
	}
	for _, c := range []struct {
		name   string
		make   func(t *testing.T) sent
		reason string
		status int // what enforce mode would answer
	}{
		{"forged", func(t *testing.T) sent {
			body := harness.NewEvent("complete").Body()
			return sent{body, harness.Ruby.Sign(t, "ssk_observe_attacker", now(), body)}
		}, "signature_mismatch", 401},
		{"stale", func(t *testing.T) sent {
			body := harness.NewEvent("complete").Body()
			return sent{body, harness.OpenSSL.Sign(t, secret, now()-900, body)}
		}, "timestamp_stale", 401},
		{"malformed signature", func(t *testing.T) sent {
			body := harness.NewEvent("complete").Body()
			sig := harness.Python.Sign(t, secret, now(), body)
			return sent{body, sig[:len(sig)-3]}
		}, "signature_malformed", 401},
		{"no signature", func(t *testing.T) sent {
			return sent{harness.NewEvent("complete").Body(), ""}
		}, "signature_missing", 401},
		{"signed, missing state", func(t *testing.T) sent {
			body := []byte(`{ "device_return_id": "` + harness.UUID() + `", "serial_number": null, "test": false }`)
			return sent{body, harness.Ruby.Sign(t, secret, now(), body)}
		}, "payload_missing_field", 400},
		{"signed, not JSON", func(t *testing.T) sent {
			body := []byte(`device_return_id=` + harness.UUID() + `&state=complete`)
			return sent{body, harness.OpenSSL.Sign(t, secret, now(), body)}
		}, "payload_invalid_json", 400},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := c.make(t)
			hdr := append([]string(nil), spoofedObserveHeaders...)
			if s.sig != "" {
				hdr = append(hdr, "X-ReReady-Signature-512", s.sig)
			}
			// Sent twice: an observed request is never replay-tracked, even
			// a validly signed one with a bad payload.
			for i := 1; i <= 2; i++ {
				m := mark(t)
				off := logOffset(g)
				ok(t, g.post(t, "/obs", s.body, hdr...))
				observed(t, m.one(t, python), s.body, c.reason, s.sig)
				waitLogSince(t, g, off, `"observed webhook that would be rejected; forwarding it (mode observe)"`,
					`"reason":"`+c.reason+`"`, `"status":`+fmt.Sprint(c.status))
			}
		})
	}

	t.Run("token never forwarded", func(t *testing.T) {
		for _, c := range []struct{ query, reason string }{
			{"?src=rr&token=tok_wrong&b=2", "token_mismatch"},
			{"?src=rr&b=2", "token_missing"},
		} {
			body := harness.NewEvent("complete").Body()
			m := mark(t)
			ok(t, g.post(t, "/obs-token"+c.query, body, spoofedObserveHeaders...))
			rec := m.one(t, node)
			observed(t, rec, body, c.reason, "")
			if rec["query"] != "src=rr&b=2" {
				t.Errorf("app saw query %q, want src=rr&b=2", rec["query"])
			}
		}
	})

	t.Run("verified marked as usual, replay applies", func(t *testing.T) {
		ev := harness.NewEvent("pending_return_shipment_delivery")
		ev.Serial = "C02OBSERVE01"
		body := ev.Body()
		ts := now()
		sig := harness.Python.Sign(t, secret, ts, body)
		hdr := append([]string{"X-ReReady-Signature-512", sig}, spoofedObserveHeaders...)
		m := mark(t)
		ok(t, g.post(t, "/obs", body, hdr...))
		delivered(t, m.one(t, python), ev, body, "hmac", fmt.Sprint(ts), sig)

		m = mark(t)
		off := logOffset(g)
		alreadyDelivered(t, g.post(t, "/obs", body, hdr...))
		m.none(t)
		waitLogSince(t, g, off, `"replayed webhook acknowledged without forwarding"`, `"reason":"replay"`)
	})

	t.Run("405 still applies", func(t *testing.T) {
		body := harness.NewEvent("complete").Body()
		m := mark(t)
		off := logOffset(g)
		r := g.request(t, http.MethodPut, "/obs", body, "X-ReReady-Signature-512", harness.Ruby.Sign(t, secret, now(), body))
		wantStatus(t, r, http.StatusMethodNotAllowed)
		if r.header.Get("Allow") != "POST" {
			t.Errorf("405 with Allow %q, want POST", r.header.Get("Allow"))
		}
		m.none(t)
		waitLogSince(t, g, off, `"rejected webhook"`, `"reason":"method_not_allowed"`, `"status":405`)
	})

	t.Run("413 still applies", func(t *testing.T) {
		ev := harness.Event{ID: harness.UUID(), State: "complete", Extra: `, "note": "` + strings.Repeat("x", 1200) + `"`}
		body := ev.Body()
		sig := harness.OpenSSL.Sign(t, secret, now(), body)
		m := mark(t)
		off := logOffset(g)
		wantStatus(t, g.post(t, "/obs", body, "X-ReReady-Signature-512", sig), http.StatusRequestEntityTooLarge)
		wantStatus(t, g.curlChunked(t, "/obs", body, "X-ReReady-Signature-512", sig), http.StatusRequestEntityTooLarge)
		m.none(t)
		waitLogSince(t, g, off, `"rejected webhook"`, `"reason":"body_too_large"`, `"status":413`)
	})

	t.Run("408 still applies", func(t *testing.T) {
		m := mark(t)
		off := logOffset(g)
		host := strings.TrimPrefix(g.Base, "http://")
		conn, err := net.DialTimeout("tcp", host, replyTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(replyTimeout))
		// 200 bytes declared, 20 sent, then silence past body_timeout (1s).
		fmt.Fprintf(conn, "POST /obs HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n%s",
			host, `{"device_return_id":`)
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			t.Fatalf("reading the status line: %v", err)
		}
		if !strings.HasPrefix(line, "HTTP/1.1 408 ") {
			t.Errorf("status line %q, want HTTP/1.1 408", strings.TrimSpace(line))
		}
		m.none(t)
		waitLogSince(t, g, off, `"rejected webhook"`, `"reason":"body_timeout"`, `"status":408`)
	})
}

// ---- metrics ------------------------------------------------------------------

// promSeries is one scrape of the caddy_reready_* series, keyed by
// seriesKey.
type promSeries map[string]float64

var (
	promLine  = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$`)
	promLabel = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// seriesKey names a series: name{k="v",...} with labels sorted by name,
// always with braces.
func seriesKey(name string, labels ...string) string {
	var pairs []string
	for i := 0; i+1 < len(labels); i += 2 {
		pairs = append(pairs, labels[i]+`="`+labels[i+1]+`"`)
	}
	sort.Strings(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// scrape reads admin's /metrics (Prometheus text format) and returns its
// caddy_reready_* samples, plus the raw text.
func scrape(t *testing.T, admin string) (promSeries, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: replyTimeout}).Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v\n%s", resp.StatusCode, err, raw)
	}
	out := promSeries{}
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "caddy_reready_") {
			continue
		}
		m := promLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("unparsable metrics line %q", line)
		}
		var labels []string
		for _, l := range promLabel.FindAllStringSubmatch(m[2], -1) {
			labels = append(labels, l[1], l[2])
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[seriesKey(m[1], labels...)] = v
	}
	return out, string(raw)
}

// seriesSum names the series of name whose labels include these pairs.
type seriesSum struct {
	name   string
	labels []string
}

// of adds the samples of the series q names.
func (p promSeries) of(q seriesSum) float64 {
	var s float64
	for k, v := range p {
		if !strings.HasPrefix(k, q.name+"{") {
			continue
		}
		all := true
		for i := 0; i+1 < len(q.labels); i += 2 {
			all = all && strings.Contains(k, q.labels[i]+`="`+q.labels[i+1]+`"`)
		}
		if all {
			s += v
		}
	}
	return s
}

// sum adds the samples of every series named name.
func (p promSeries) sum(name string) float64 {
	var s float64
	for k, v := range p {
		if strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

// With the `metrics` global option, the admin endpoint's /metrics counts
// each request by outcome and reason, verified events by state (unknown for
// undocumented ones) and test flag, and times each decision. The counts
// move by exactly what was sent.
func TestMetricsScrape(t *testing.T) {
	const secret = "ssk_metrics_9f8e7d6c"
	ctl := startCtlApp(t)
	g := startGatewayWith(t, "\tmetrics", `
	reready_verify /m/* {
		secret `+secret+`
	}
	reready_verify /obs {
		secret `+secret+`
		mode observe
	}
	reverse_proxy /m/app {{python}}
	reverse_proxy /m/ctl `+ctl.addr+`
	reverse_proxy /obs {{python}}`, nil, secret)
	admin := adminAddr(t, g)

	before, _ := scrape(t, admin)
	sig := func(body []byte) string { return harness.Ruby.Sign(t, secret, now(), body) }
	post := func(path string, body []byte, hdr ...string) reply { return g.post(t, path, body, hdr...) }

	// Verified: two real complete events, one test complete event, one in
	// an undocumented state.
	first := harness.NewEvent("complete").Body()
	firstSig := sig(first)
	ok(t, post("/m/app", first, "X-ReReady-Signature-512", firstSig))
	second := harness.NewEvent("complete").Body()
	ok(t, post("/m/app", second, "X-ReReady-Signature-512", sig(second)))
	testEv := harness.NewEvent("complete")
	testEv.Test = true
	testBody := testEv.Body()
	ok(t, post("/m/app", testBody, "X-ReReady-Signature-512", sig(testBody)))
	const oddState = "teleported_by_metrics_test"
	odd := harness.NewEvent(oddState).Body()
	ok(t, post("/m/app", odd, "X-ReReady-Signature-512", sig(odd)))

	// Rejected: forged, stale, wrong method.
	forged := harness.NewEvent("complete").Body()
	wantStatus(t, post("/m/app", forged, "X-ReReady-Signature-512", harness.Python.Sign(t, "ssk_metrics_attacker", now(), forged)), 401)
	stale := harness.NewEvent("complete").Body()
	wantStatus(t, post("/m/app", stale, "X-ReReady-Signature-512", harness.OpenSSL.Sign(t, secret, now()-900, stale)), 401)
	wantStatus(t, g.request(t, http.MethodGet, "/m/app", nil), 405)

	// Replayed: the first delivery again.
	alreadyDelivered(t, post("/m/app", first, "X-ReReady-Signature-512", firstSig))

	// In flight: a verified pending_return_shipment held at the upstream,
	// and a repeat of it (rejected, replay_in_flight).
	held := harness.NewEvent("pending_return_shipment").Body()
	heldSig := sig(held)
	n := ctl.count()
	hold := ctl.holdNext()
	heldReply := sendAsync(t, g.Base, "/m/ctl", held, "X-ReReady-Signature-512", heldSig)
	ctl.waitCount(t, n+1)
	wantStatus(t, post("/m/ctl", held, "X-ReReady-Signature-512", heldSig), 409)
	hold.release()
	ok(t, heldReply())

	// Observed: a forgery in observe mode.
	obs := harness.NewEvent("complete").Body()
	obsSig := harness.Python.Sign(t, "ssk_metrics_attacker", now(), obs)
	m := mark(t)
	ok(t, post("/obs", obs, "X-ReReady-Signature-512", obsSig))
	observed(t, m.one(t, python), obs, "signature_mismatch", obsSig)

	// 5 verified, 4 rejected, 1 replayed, 1 observed.
	const sent = 11
	after, raw := scrape(t, admin)
	delta := func(key string) float64 { return after[key] - before[key] }
	if !strings.Contains(raw, "caddy_http_requests_total") {
		t.Errorf("/metrics lacks Caddy's HTTP series, which the metrics option adds")
	}

	req := func(outcome, reason string) string {
		return seriesKey("caddy_reready_requests_total", "outcome", outcome, "reason", reason)
	}
	ev := func(state, test string) string {
		return seriesKey("caddy_reready_events_total", "state", state, "test", test)
	}
	for key, want := range map[string]float64{
		req("verified", ""):                             5,
		req("rejected", "signature_mismatch"):           1,
		req("rejected", "timestamp_stale"):              1,
		req("rejected", "method_not_allowed"):           1,
		req("rejected", "replay_in_flight"):             1,
		req("replayed", "replay"):                       1,
		req("observed", "signature_mismatch"):           1,
		ev("complete", "false"):                         2,
		ev("complete", "true"):                          1,
		ev("unknown", "false"):                          1,
		ev("pending_return_shipment", "false"):          1,
		ev("pending_return_shipment", "true"):           0,
		ev("failed", "false"):                           0,
		"caddy_reready_verify_duration_seconds_count{}": sent,
	} {
		if got := delta(key); got != want {
			t.Errorf("%s moved by %v, want %v (before %v, after %v)", key, got, want, before[key], after[key])
		}
	}
	// Nothing else was counted.
	if got := after.sum("caddy_reready_requests_total") - before.sum("caddy_reready_requests_total"); got != sent {
		t.Errorf("caddy_reready_requests_total moved by %v in all, want %d", got, sent)
	}
	if got := after.sum("caddy_reready_events_total") - before.sum("caddy_reready_events_total"); got != 5 {
		t.Errorf("caddy_reready_events_total moved by %v in all, want 5 (the verified requests)", got)
	}
	if d := delta("caddy_reready_verify_duration_seconds_sum{}"); d <= 0 {
		t.Errorf("caddy_reready_verify_duration_seconds_sum moved by %v, want > 0", d)
	}
	if got := delta(`caddy_reready_verify_duration_seconds_bucket{le="+Inf"}`); got != sent {
		t.Errorf(`caddy_reready_verify_duration_seconds_bucket{le="+Inf"} moved by %v, want %d`, got, sent)
	}
	// Five deliveries remembered, none in flight.
	if got := after["caddy_reready_replay_entries{}"]; got != 5 {
		t.Errorf("caddy_reready_replay_entries = %v, want 5", got)
	}
	// No label carries request data.
	if strings.Contains(raw, oddState) {
		t.Errorf("/metrics contains the undocumented state %q sent in a request", oddState)
	}
	outcomes := regexp.MustCompile(`outcome="(verified|rejected|replayed|observed)"`)
	for k := range after {
		if strings.HasPrefix(k, "caddy_reready_requests_total{") && !outcomes.MatchString(k) {
			t.Errorf("unexpected outcome in %s", k)
		}
	}
	if t.Failed() {
		t.Logf("scrape after:\n%s", grepLines(raw, "caddy_reready_"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
