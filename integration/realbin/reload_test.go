//go:build fullsuite

package realbin

import (
	"fmt"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// relMigrateReq is the sysctl that lets Linux move connections queued on a
// closing SO_REUSEPORT listener to another listener of the group, instead of
// resetting them.
const relMigrateReq = "/proc/sys/net/ipv4/tcp_migrate_req"

// relReloadFigures is what a reload run counted.
type relReloadFigures struct {
	requests    int               // valid deliveries attempted
	ok          int               // answered 200 {"ok":true}, first time or after retries
	badStatus   map[int]int       // answered with another status
	connErrors  map[string]int    // transport errors, every attempt, by kind
	examples    map[string]string // one error message per kind
	firstErrors int               // deliveries whose first attempt hit a transport error
	retries     int               // attempts after a transport error
	unanswered  int               // deliveries still failing after every retry
	retryAcked  int               // retries answered "already delivered": the broken attempt had been forwarded
	reloads     int
	took        time.Duration
}

func (f relReloadFigures) resets() int { return f.connErrors["reset"] }

func (f relReloadFigures) String() string {
	var kinds []string
	for k, n := range f.connErrors {
		kinds = append(kinds, fmt.Sprintf("%s:%d", k, n))
	}
	sort.Strings(kinds)
	var bad []string
	for s, n := range f.badStatus {
		bad = append(bad, fmt.Sprintf("%d:%d", s, n))
	}
	sort.Strings(bad)
	return fmt.Sprintf("reloads=%d valid=%d ok=%d error_status=%d [%s] conn_errors=%d [%s] resets=%d deliveries_retried=%d retries=%d retries_already_delivered=%d unanswered=%d in %.1fs",
		f.reloads, f.requests, f.ok, relSum(f.badStatus), strings.Join(bad, " "), relSum(f.connErrors), strings.Join(kinds, " "),
		f.resets(), f.firstErrors, f.retries, f.retryAcked, f.unanswered, f.took.Seconds())
}

func relSum[K comparable](m map[K]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// `caddy reload`, each time with a secret added, while valid deliveries
// arrive at concurrency 48 on fresh connections: no valid delivery is
// answered with an error status; connections reset during the listener
// handover are counted (a sender retries them, and the retry is delivered);
// every delivery reaches the app exactly once; a delivery made before the
// reloads is acknowledged without forwarding after them (the replay memory
// survived), and the last secret added is in force.
//
// Two kinds of connection error occur, both before anything is forwarded
// (no retry is ever answered "already delivered"):
//   - resets: Caddy binds the new config's listener with SO_REUSEPORT and
//     closes the old one; Linux resets the connections still queued on the
//     closed one, unless net.ipv4.tcp_migrate_req=1 moves them to the new
//     listener;
//   - EOFs: Go's http.Server closes, unanswered, a connection whose first
//     request it reads after Shutdown began (net/http conn.serve returns
//     when shuttingDown() after readRequest); no sysctl changes that.
//
// It runs twice, with net.ipv4.tcp_migrate_req 0 and 1 (wanting no reset
// with 1), and restores the original value.
func TestReliabilityReload(t *testing.T) {
	orig, err := os.ReadFile(relMigrateReq)
	if err != nil {
		t.Logf("RELIABILITY reload: %s unreadable (%v); running without setting it", relMigrateReq, err)
	}
	origVal := strings.TrimSpace(string(orig))
	if err == nil {
		t.Cleanup(func() {
			if err := os.WriteFile(relMigrateReq, []byte(origVal), 0o644); err != nil {
				t.Errorf("restoring %s to %s: %v", relMigrateReq, origVal, err)
			}
		})
	}
	figures := map[string]relReloadFigures{}
	for _, val := range []string{"0", "1"} {
		t.Run("tcp_migrate_req="+val, func(t *testing.T) {
			if origVal == "" {
				if val != "0" {
					t.Skip("no tcp_migrate_req on this kernel")
				}
			} else if err := os.WriteFile(relMigrateReq, []byte(val), 0o644); err != nil {
				t.Logf("RELIABILITY reload: cannot set net.ipv4.tcp_migrate_req=%s in this sandbox: %v", val, err)
				if val != origVal {
					t.Skipf("cannot set tcp_migrate_req=%s: %v", val, err)
				}
			}
			f := relReloadRun(t)
			figures[val] = f
			if val == "1" && f.resets() > 0 {
				t.Errorf("%d connections reset with tcp_migrate_req=1: the kernel did not migrate the old listener's queue", f.resets())
			}
			t.Logf("RELIABILITY reload tcp_migrate_req=%s: %s", val, f)
			for kind, e := range f.examples {
				t.Logf("RELIABILITY reload tcp_migrate_req=%s: %s, e.g. %s", val, kind, e)
			}
		})
	}
	if a, ok := figures["0"]; ok {
		if b, ok := figures["1"]; ok {
			t.Logf("RELIABILITY reload: connection errors without tcp_migrate_req=%d (resets %d), with tcp_migrate_req=1: %d (resets %d); restoring the original value %s",
				relSum(a.connErrors), a.resets(), relSum(b.connErrors), b.resets(), origVal)
		}
	}
}

// relReloadRun runs one gateway through 6 reloads under load.
func relReloadRun(t *testing.T) relReloadFigures {
	const concurrency, reloads = 48, 6
	secrets := []string{"ssk_reload_first_7d3c"}
	app := relStartApp(t, "")
	g := startGateway(t, `
	reready_verify /webhooks/reready {
		secret `+secrets[0]+`
	}
	reverse_proxy /webhooks/reready `+app.addr, nil, secrets[0])
	firstSecret := secrets[0] // the workers' key; secrets grows as they run
	l := relNewLedger(secrets)

	// A delivery before the reloads.
	first := harness.NewEvent("complete")
	firstBody, ts := first.Body(), now()
	l.sent(ts, firstBody)
	firstSig := relSign(secrets[0], ts, firstBody)
	if status, reply, err := relPost(relClient, g, "/webhooks/reready", firstBody, firstSig); err != nil || status != http.StatusOK || reply != `{"ok":true}` {
		t.Fatalf("delivery before the reloads: %d %q %v", status, reply, err)
	}

	f := relReloadFigures{badStatus: map[int]int{}, connErrors: map[string]int{}, examples: map[string]string{}}
	var mu sync.Mutex
	var sent []relJob
	stop := make(chan struct{})
	var wg sync.WaitGroup
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad() // also on t.Fatal, so no worker outlives the test
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				ev := harness.NewEvent(states[n%len(states)])
				body, ts := ev.Body(), now()
				l.sent(ts, body)
				sig := relSign(firstSecret, ts, body)
				var status int
				var reply string
				var err error
				tries := 0
				for ; tries < 6; tries++ {
					if tries > 0 {
						time.Sleep(20 * time.Millisecond)
					}
					status, reply, err = relPost(relClient, g, "/webhooks/reready", body, sig)
					if err == nil {
						break
					}
					mu.Lock()
					kind := relConnError(err)
					f.connErrors[kind]++
					if f.examples[kind] == "" {
						f.examples[kind] = err.Error()
					}
					mu.Unlock()
				}
				mu.Lock()
				f.requests++
				sent = append(sent, relJob{id: ev.ID, body: body, sig: sig})
				if tries > 0 {
					f.firstErrors++
					f.retries += min(tries, 5)
				}
				switch {
				case err != nil:
					f.unanswered++
				case status == http.StatusOK && reply == `{"ok":true}`:
					f.ok++
				case status == http.StatusOK && reply == "already delivered\n" && tries > 0:
					f.ok++ // a retry of one that got through before its connection broke
					f.retryAcked++
				default:
					f.badStatus[status]++
					if relSum(f.badStatus) <= 5 {
						t.Errorf("valid delivery answered %d %q (after %d transport errors)", status, reply, tries)
					}
				}
				mu.Unlock()
			}
		}()
	}

	// Reload, each time with one more secret, while the load runs.
	time.Sleep(300 * time.Millisecond)
	for i := 2; i <= reloads+1; i++ {
		secrets = append(secrets, fmt.Sprintf("ssk_reload_added_%d_%x", i, time.Now().UnixNano()&0xffffff))
		l.addSecret(secrets[len(secrets)-1])
		relReload(t, g, secrets)
		f.reloads++
		time.Sleep(300 * time.Millisecond)
	}
	stopLoad()
	f.took = time.Since(start)

	// Every valid delivery reached the app exactly once, intact.
	lost, dup, altered := 0, 0, 0
	for _, j := range sent {
		got := app.requests(j.id)
		switch {
		case len(got) == 0:
			lost++
		case len(got) > 1:
			dup += len(got) - 1
		case string(got[0].body) != string(j.body):
			altered++
		}
	}
	if lost+dup+altered > 0 {
		t.Errorf("of %d deliveries, %d never reached the app, %d were duplicated, %d altered", len(sent), lost, dup, altered)
	}
	if relSum(f.badStatus) > 0 || f.unanswered > 0 {
		t.Errorf("valid deliveries answered with an error status: %v; unanswered after retries: %d", f.badStatus, f.unanswered)
	}

	// The replay memory outlived the reloads.
	status, reply, err := relPost(relClient, g, "/webhooks/reready", firstBody, firstSig)
	if err != nil || status != http.StatusOK || reply != "already delivered\n" {
		t.Errorf("repeat of the delivery made before the reloads: %d %q %v, want 200 \"already delivered\"", status, reply, err)
	}
	if n := len(app.requests(first.ID)); n != 1 {
		t.Errorf("the delivery made before the reloads reached the app %d times, want 1", n)
	}
	// The last reload is in force: the newest secret verifies.
	ev := harness.NewEvent("failed")
	body, ts := ev.Body(), now()
	l.sent(ts, body)
	newest := secrets[len(secrets)-1]
	if status, reply, err := relPost(relClient, g, "/webhooks/reready", body, relSign(newest, ts, body)); err != nil || status != http.StatusOK || reply != `{"ok":true}` {
		t.Errorf("delivery signed with the secret added last: %d %q %v, want 200", status, reply, err)
	}
	relStopAndScan(t, g, l, 0, false)
	return f
}

// relReload rewrites g's Caddyfile with secrets in place of its single
// first secret and runs `caddy reload` on it.
func relReload(t *testing.T, g *gateway, secrets []string) {
	t.Helper()
	src, err := os.ReadFile(g.Config)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^(\s*secret) .*$`)
	changed := re.ReplaceAllString(string(src), "${1} "+strings.Join(secrets, " "))
	if err := os.WriteFile(g.Config, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	res := caddyCmd(t, nil, "reload", "--config", g.Config, "--adapter", "caddyfile")
	if res.err != nil {
		t.Fatalf("caddy reload: %v\n%s", res.err, res.output)
	}
	for _, s := range secrets {
		if strings.Contains(res.output, s) {
			t.Errorf("caddy reload printed the secret %q", s)
		}
	}
}

// A secret added in front of the old one (the order an operator may well
// choose for "the new secret") must not make the gateway forget what it
// delivered: a repeat of a delivery from before the reload is still
// acknowledged without forwarding.
func TestReliabilityReloadSecretPrepended(t *testing.T) {
	const old, added = "ssk_rotate_old_51e9c3", "ssk_rotate_new_a07d28"
	app := relStartApp(t, "")
	g := startGateway(t, `
	reready_verify /webhooks/reready {
		secret `+old+`
	}
	reverse_proxy /webhooks/reready `+app.addr, nil, old, added)
	l := relNewLedger([]string{old, added})

	ev := harness.NewEvent("complete")
	body, ts := ev.Body(), now()
	l.sent(ts, body)
	sig := relSign(old, ts, body)
	if status, reply, err := relPost(relClient, g, "/webhooks/reready", body, sig); err != nil || status != http.StatusOK || reply != `{"ok":true}` {
		t.Fatalf("delivery before the reload: %d %q %v", status, reply, err)
	}
	relReload(t, g, []string{added, old})
	status, reply, err := relPost(relClient, g, "/webhooks/reready", body, sig)
	if err != nil {
		t.Fatal(err)
	}
	n := len(app.requests(ev.ID))
	if status != http.StatusOK || reply != "already delivered\n" || n != 1 {
		t.Errorf("repeat of a delivery made before a reload that put a new secret first: %d %q, and the app got the event %d times; "+
			"want 200 \"already delivered\" and 1 (the replay key is the MAC under the first configured secret, which the reload changed)", status, reply, n)
	}
	relStopAndScan(t, g, l, 0, false)
	t.Logf("RELIABILITY reload-prepend: repeat answered %d %q, app deliveries=%d (want 1)", status, strings.TrimSpace(reply), n)
}
