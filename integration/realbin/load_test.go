//go:build fullsuite

package realbin

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// relJob is one request of a load run.
type relJob struct {
	id     string // device_return_id
	body   []byte
	sig    string
	target string
	forged string // how it is forged; "" for a valid request
}

// relForgeries are the ways a load run forges a request; each must get 401.
var relForgeries = []string{"wrong secret", "tampered body", "flipped MAC digit", "stale timestamp", "wrong token", "no token"}

// relJobs makes valid uniquely signed deliveries and forged ones,
// shuffled, and notes every expected MAC in l.
func relJobs(secret, token string, valid, forged int, l *relLedger) []relJob {
	jobs := make([]relJob, 0, valid+forged)
	target := "/webhooks/reready?token=" + token
	for i := 0; i < valid+forged; i++ {
		ev := harness.NewEvent(states[i%len(states)])
		if i%3 == 0 { // vary the size and the bytes
			ev.Extra = fmt.Sprintf(`, "note": "Zoë’s %s \u00e9\t%d"`, strings.Repeat("é", i%97), i)
		}
		body, ts := ev.Body(), now()
		j := relJob{id: ev.ID, body: body, target: target}
		if i < valid {
			j.sig = relSign(secret, ts, body)
			l.sent(ts, body)
			jobs = append(jobs, j)
			continue
		}
		j.forged = relForgeries[i%len(relForgeries)]
		switch j.forged {
		case "wrong secret":
			j.sig = relSign("ssk_attacker_guess_"+fmt.Sprint(i), ts, body)
		case "tampered body":
			j.sig = relSign(secret, ts, body)
			j.body = bytes.Replace(body, []byte(`"test": false`), []byte(`"test": true `), 1)
		case "flipped MAC digit":
			j.sig = relSign(secret, ts, body)
			last := j.sig[len(j.sig)-1]
			j.sig = j.sig[:len(j.sig)-1] + map[bool]string{true: "1", false: "0"}[last == '0']
		case "stale timestamp":
			ts -= 3600
			j.sig = relSign(secret, ts, body)
		case "wrong token":
			j.sig = relSign(secret, ts, body)
			j.target = "/webhooks/reready?token=" + token[:len(token)-1] + "x"
		case "no token":
			j.sig = relSign(secret, ts, body)
			j.target = "/webhooks/reready"
		}
		l.sent(ts, j.body)
		jobs = append(jobs, j)
	}
	rand.Shuffle(len(jobs), func(a, b int) { jobs[a], jobs[b] = jobs[b], jobs[a] })
	return jobs
}

// relCheckSignatures checks a sample of relSign's signatures against the
// independent signers, so the load runs' signing cannot hide a bug.
func relCheckSignatures(t *testing.T, secret string, jobs []relJob) {
	t.Helper()
	n := 0
	for _, j := range jobs {
		if j.forged != "" {
			continue
		}
		var ts int64
		fmt.Sscanf(j.sig, "t=%d,", &ts)
		s := harness.Signers[n%len(harness.Signers)]
		if got := s.Sign(t, secret, ts, j.body); got != j.sig {
			t.Fatalf("the %s signer made %s, Go's crypto/hmac %s", s.Name, got, j.sig)
		}
		if n++; n == len(harness.Signers) {
			return
		}
	}
}

// 2,000 valid deliveries, each signed uniquely, and 500 forged ones, shuffled
// and sent at concurrency 64 over keep-alive connections to a Go app: every
// valid one is delivered exactly once with its body byte for byte and
// answered 200, every forged one is answered 401 and never forwarded.
func TestReliabilityLoad(t *testing.T) {
	const secret, token = "ssk_load_4e8a1f6c2b9d", "tok_load_93c1e0a7f5"
	const valid, forged, concurrency = 2000, 500, 64
	app := relStartApp(t, "")
	g := startGatewayWith(t, relLogFilter, `
	reready_verify /webhooks/reready {
		secret `+secret+`
		token `+token+`
	}
	reverse_proxy /webhooks/reready `+app.addr, nil, secret, token)
	l := relNewLedger([]string{secret}, token)
	jobs := relJobs(secret, token, valid, forged, l)
	relCheckSignatures(t, secret, jobs)

	client := &http.Client{Timeout: replyTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: concurrency}}
	defer client.CloseIdleConnections()
	type outcome struct {
		status int
		reply  string
		err    error
	}
	outcomes := make([]outcome, len(jobs))
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				j := jobs[i]
				status, reply, err := relPost(client, g, j.target, j.body, j.sig)
				outcomes[i] = outcome{status, reply, err}
			}
		}()
	}
	for i := range jobs {
		next <- i
	}
	close(next)
	wg.Wait()
	took := time.Since(start)

	var errs, wrongStatus, delivered, dup, lost, altered, forgedForwarded int
	for i, j := range jobs {
		o := outcomes[i]
		want := http.StatusOK
		if j.forged != "" {
			want = http.StatusUnauthorized
		}
		switch {
		case o.err != nil:
			errs++
			if errs <= 5 {
				t.Errorf("request %d (%s): %v", i, map[bool]string{true: "valid", false: j.forged}[j.forged == ""], o.err)
			}
		case o.status != want || want == http.StatusOK && o.reply != `{"ok":true}`:
			wrongStatus++
			if wrongStatus <= 5 {
				t.Errorf("request %d (forged: %q): %d %q, want %d", i, j.forged, o.status, o.reply, want)
			}
		}
		got := app.requests(j.id)
		if j.forged != "" {
			if len(got) > 0 {
				forgedForwarded++
				t.Errorf("forged request (%s) was forwarded", j.forged)
			}
			continue
		}
		switch {
		case len(got) == 0:
			lost++
		case len(got) > 1:
			dup += len(got) - 1
		}
		if len(got) > 0 {
			delivered++
			if !bytes.Equal(got[0].body, j.body) || got[0].verified != "hmac,token" {
				altered++
			}
		}
	}
	if lost+dup+altered > 0 || app.total() != valid {
		t.Errorf("the app got %d requests for %d valid ones: %d lost, %d duplicated, %d altered", app.total(), valid, lost, dup, altered)
	}
	relStopAndScan(t, g, l, forged, false)
	t.Logf("RELIABILITY load: valid=%d forged=%d concurrency=%d delivered=%d dup=%d lost=%d altered=%d forged_forwarded=%d wrong_status=%d errors=%d in %.1fs (%.0f req/s, Go upstream)",
		valid, forged, concurrency, delivered, dup, lost, altered, forgedForwarded, wrongStatus, errs, took.Seconds(), float64(len(jobs))/took.Seconds())
}
