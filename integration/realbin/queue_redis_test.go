//go:build fullsuite

package realbin

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// The fleet on a networked store: a Redis outage longer than the lock TTL
// in the middle of a backlog, replay suppression across two gateways, and
// a reload mid-backlog (on both storages).

// backlog queues returns × per deliveries with the app down, through g,
// every line in order; all must be answered 202.
func backlog(t *testing.T, g *gateway, secret string, returns, per int) [][]floodDelivery {
	t.Helper()
	lines := floodLines(t, secret, returns, per)
	for id, status := range sendFlood(t, g.Base, lines) {
		if status != http.StatusAccepted {
			t.Fatalf("%s answered %d with the app down, want 202", id, status)
		}
	}
	return lines
}

// Redis stops answering for longer than the lock TTL while two gateways
// drain a backlog: afterwards nothing is lost, each return's deliveries
// reached the app in order, the fleet logged the outage and both recovered
// without a restart. A delivery may reach the app twice only across a lost
// lock, with the same delivery id: counted and reported.
func TestQueueRedisOutage(t *testing.T) {
	const secret = "ssk_queue_redis_outage_6b7c8d9e"
	const returns, per = 20, 8
	st := newBackend(t, "redis")
	app := harness.NewUpstream(t)
	site := queueSite(secret, "", app.Addr)
	g1 := st.gateway(t, 0, site, secret)
	gs := []*gateway{g1, st.gateway(t, portOf(t, g1), site, secret)}
	lines := backlog(t, g1, secret, returns, per)

	app.SetRule(func(*harness.Request) harness.Answer { return harness.Answer{Delay: 150 * time.Millisecond} }) // a drain that takes a while
	app.Up(t)
	ok(t, signEvent(t, harness.Ruby, secret, harness.NewEvent("complete")).post(t, g1, "/hooks/app")) // go now
	harness.WaitUntil(t, "the drain did not start", queueTimeout, func() bool { return len(app.Records()) > 10 })
	offs := []int{logOffset(gs[0]), logOffset(gs[1])}
	paused := time.Now()
	st.redis.pause(t, 8*time.Second) // longer than the 5 s lock TTL
	t.Logf("Redis paused for %s with %d requests at the app", time.Since(paused).Round(100*time.Millisecond), len(app.Records()))

	waitAllDelivered(t, app, lines, 3*time.Minute)
	rep := checkFlood(t, app, lines)
	if rep.outOfOrder > 0 || rep.wrongBodies > 0 {
		t.Errorf("%d returns out of order (%d pairs), %d bodies changed", rep.badReturns, rep.outOfOrder, rep.wrongBodies)
	}
	lost := 0
	for _, line := range lines {
		for _, d := range line {
			if app.Delivered(d.id) == 0 {
				lost++
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d deliveries lost", lost)
	}
	// A gateway whose worker happened not to call the storage while it was
	// paused (between scans, its attempts answered after it came back) has
	// nothing to log; the fleet as a whole must have noticed.
	lockLoss, unrecorded, errorLines := 0, 0, make([]int, len(gs))
	for i, g := range gs {
		logs := g.Logs.String()[offs[i]:]
		lockLoss += strings.Count(logs, "changed while this gateway held its storage lock")
		unrecorded += strings.Count(logs, `"queue: recording an attempt"`)
		errorLines[i] = strings.Count(logs, `"level":"error"`)
	}
	if errorLines[0]+errorLines[1] == 0 {
		t.Errorf("no gateway logged an error during the outage")
	}
	t.Logf("error lines logged during the outage, by gateway: %v", errorLines)
	t.Logf("RELIABILITY redis outage: %d deliveries, %d lost, %d out of order; %d taken twice, with the same delivery id (%d attempts whose outcome the outage kept from being recorded, %d lock losses noticed): %s",
		returns*per, lost, rep.outOfOrder, len(rep.notOnce), unrecorded, lockLoss, strings.Join(first(rep.notOnce, 10), " "))
	for _, dup := range rep.notOnce {
		if strings.HasSuffix(dup, "×0") {
			t.Errorf("delivery %s was not taken", dup)
		}
	}
	// Recovered without a restart: both take and queue deliveries again.
	harness.WaitUntil(t, "the queue did not empty", 30*time.Second, func() bool { return len(queueList(t, gs[1])) == 0 })
	for _, g := range gs {
		g.WaitScans(t, 1, queueTimeout)
		ok(t, signEvent(t, harness.OpenSSL, secret, harness.NewEvent("complete")).post(t, g, "/hooks/app"))
	}
}

// With replay suppression in the shared storage, the same signed delivery
// sent to two gateways at the same moment reaches the app once.
func TestReplayAcrossGatewaysOnRedis(t *testing.T) {
	const secret = "ssk_replay_redis_fleet_0c1d2e3f"
	st := newBackend(t, "redis")
	app := harness.NewUpstream(t)
	app.SetRule(func(*harness.Request) harness.Answer { return harness.Answer{Delay: 20 * time.Millisecond} })
	app.Up(t)
	site := fmt.Sprintf(`
	reready_verify /hooks/* {
		secret %s
		replay storage
	}
	reverse_proxy /hooks/* %s`, secret, app.Addr)
	gs := []*gateway{st.gateway(t, 0, site, secret), st.gateway(t, 0, site, secret)} // each on its own port
	const n = 20
	answers := map[int]int{}
	for i := range n {
		d := signEvent(t, []harness.Signer{harness.Ruby, harness.OpenSSL, harness.Python}[i%3], secret, harness.NewEvent("complete"))
		var wg sync.WaitGroup
		start := make(chan struct{})
		got := make([]reply, len(gs))
		for j, g := range gs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				got[j] = d.post(t, g, "/hooks/app")
			}()
		}
		close(start)
		wg.Wait()
		for _, r := range got {
			answers[r.status]++
		}
		if n := len(app.ForID(d.id)); n != 1 {
			t.Errorf("delivery %d reached the app %d times through two gateways at once, want 1 (answers %d, %d)", i, n, got[0].status, got[1].status)
		}
	}
	t.Logf("answers to %d pairs: %v (200: the app's or already delivered; 409: in flight at the other)", n, answers)
	if answers[http.StatusOK]+answers[http.StatusConflict] != 2*n {
		t.Errorf("answers %v, want only 200 and 409", answers)
	}
}

// A `caddy reload` in the middle of a backlog's drain: the new config's
// worker carries on where the old one stopped; every delivery reaches the
// app, in order per return, on both storages.
func TestQueueReloadMidBacklog(t *testing.T) {
	for _, name := range storages {
		t.Run(name, func(t *testing.T) {
			const secret = "ssk_queue_reload_backlog_4d5e6f7a"
			const returns, per = 20, 6
			st := newBackend(t, name)
			app := harness.NewUpstream(t)
			g := st.gateway(t, 0, queueSite(secret, "", app.Addr), secret)
			lines := backlog(t, g, secret, returns, per)
			app.SetRule(func(*harness.Request) harness.Answer { return harness.Answer{Delay: 50 * time.Millisecond} })
			app.Up(t)
			ok(t, signEvent(t, harness.Ruby, secret, harness.NewEvent("complete")).post(t, g, "/hooks/app")) // go now
			harness.WaitUntil(t, "the drain did not start", queueTimeout, func() bool { return len(app.Records()) > 10 })
			for i := range 2 {
				src, err := os.ReadFile(g.Config)
				if err != nil {
					t.Fatal(err)
				}
				changed := bytes.Replace(src, []byte("reverse_proxy /hooks/*"), []byte(fmt.Sprintf("header X-Reload %d\n\treverse_proxy /hooks/*", i)), 1)
				changed = bytes.Replace(changed, []byte(fmt.Sprintf("header X-Reload %d\n", i-1)), nil, 1)
				if err := os.WriteFile(g.Config, changed, 0o600); err != nil {
					t.Fatal(err)
				}
				if res := caddyCmdBin(t, st.bin, nil, "reload", "--config", g.Config, "--adapter", "caddyfile", "--address", adminAddr(t, g)); res.err != nil {
					t.Fatalf("caddy reload: %v\n%s", res.err, res.output)
				}
				time.Sleep(200 * time.Millisecond) // let the new config's worker take some
			}
			waitAllDelivered(t, app, lines, 2*time.Minute)
			rep := checkFlood(t, app, lines)
			if rep.outOfOrder > 0 || rep.wrongBodies > 0 || len(rep.notOnce) > 0 {
				t.Errorf("%d returns out of order (%d pairs), %d bodies changed, %d not taken once: %s", rep.badReturns, rep.outOfOrder,
					rep.wrongBodies, len(rep.notOnce), strings.Join(first(rep.notOnce, 10), " "))
			}
		})
	}
}
