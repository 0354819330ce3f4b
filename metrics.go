package rereadyverify

import (
	"errors"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics. Collectors are created once per process and registered on each
// config's registry (ctx.GetMetricsRegistry()); a registry that already has
// them keeps them, so counts carry across config reloads.
//
//	caddy_reready_requests_total{outcome,reason}  requests by decision
//	caddy_reready_events_total{state,test}        verified events passed on
//	caddy_reready_verify_duration_seconds         handler entry to decision
//	caddy_reready_replay_entries                  memory replay store size
//	caddy_reready_replay_evictions_total          deliveries forgotten early
//	caddy_reready_queue_items{status}             queued deliveries: pending, dead
//	caddy_reready_queue_oldest_age_seconds        age of the oldest pending one
//	caddy_reready_redeliveries_total{result,probe} attempts: delivered, failed, dead
//	caddy_reready_queue_scans_total               scans of the queue completed
//	caddy_reready_paused{path}                    1 while a path is paused ("*": every path), as the worker reads it (no series without queue)

// Request outcomes, the outcome label of caddy_reready_requests_total.
const (
	outcomeVerified = "verified" // passed on; reason ""
	outcomeRejected = "rejected" // refused; reason is the Reason
	outcomeReplayed = "replayed" // stopped by the replay gate; reason says how
	outcomeObserved = "observed" // failed a check but passed on anyway
)

// Redelivery results, the result label of caddy_reready_redeliveries_total.
const (
	redeliveryDelivered = "delivered" // the app took it
	redeliveryFailed    = "failed"    // still queued
	redeliveryDead      = "dead"      // given up on (or set aside)
)

// stateUnknown is the state label for states ReReady does not document.
const stateUnknown = "unknown"

// requestLabels is a (outcome, reason) pair.
type requestLabels struct{ outcome, reason string }

// maxCachedLabels bounds the resolved-counter cache; further pairs are
// resolved on each use. Reasons are code constants, so this is never hit in
// practice.
const maxCachedLabels = 256

// metrics records one config's observations. A nil *metrics records
// nothing, so a handler without metrics can call it unconditionally.
type metrics struct {
	requests *prometheus.CounterVec
	events   *prometheus.CounterVec
	duration prometheus.Observer

	redeliveries *prometheus.CounterVec
	paused       *prometheus.GaugeVec

	verified prometheus.Counter      // requests{verified,""}
	byState  [][2]prometheus.Counter // events by verify.States index; the last row is unknown

	mu      sync.Mutex                                           // serializes cache misses
	counter atomic.Pointer[map[requestLabels]prometheus.Counter] // copy on write
}

// The process's collectors.
var processMetrics struct {
	once       sync.Once
	requests   *prometheus.CounterVec
	events     *prometheus.CounterVec
	duration   prometheus.Histogram
	entries    prometheus.GaugeFunc
	evictions  prometheus.CounterFunc
	redeliver  *prometheus.CounterVec
	paused     *prometheus.GaugeVec
	collectors []prometheus.Collector
}

func initProcessMetrics() {
	const ns, sub = "caddy", "reready"
	pm := &processMetrics
	pm.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "requests_total",
		Help: "Requests seen by reready_verify, by outcome (verified, rejected, replayed, observed) and reason code.",
	}, []string{"outcome", "reason"})
	pm.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "events_total",
		Help: "Verified ReReady events reready_verify passed on to the next handler (reverse_proxy, or a route such as respond @test that answers test events itself), by state (unknown for undocumented states) and test flag. Replays acknowledged without forwarding and requests that failed a check are not counted.",
	}, []string{"state", "test"})
	pm.duration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: ns, Subsystem: sub, Name: "verify_duration_seconds",
		Help:    "Time from handler entry to the decision to pass a request on or answer it, body read included.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
	pm.entries = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: ns, Subsystem: sub, Name: "replay_entries",
		Help: "Deliveries and in-flight claims held by the in-memory replay store.",
	}, func() float64 {
		if m := sharedMemoryReplay.Load(); m != nil {
			return float64(m.entries.Load())
		}
		return 0
	})
	pm.evictions = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "replay_evictions_total",
		Help: "Deliveries the in-memory replay store forgot before they expired, to stay within its capacity.",
	}, func() float64 {
		if m := sharedMemoryReplay.Load(); m != nil {
			return float64(m.evictions.Load())
		}
		return 0
	})
	pm.redeliver = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "redeliveries_total",
		Help: "Redelivery attempts of queued deliveries, by result (delivered, failed, dead) and probe (true: the one attempt of a route whose app is failing).",
	}, []string{"result", "probe"})
	pm.paused = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: ns, Subsystem: sub, Name: "paused",
		Help: "1 for each request path whose deliveries are paused (held in the queue), \"*\" for every path; as the redelivery worker last read the storage.",
	}, []string{"path"})
	queueGauge := func(status string, n func(*worker) int64) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "queue_items",
			Help:        "Queued deliveries in the storage, by status (pending, dead), as this gateway last read them.",
			ConstLabels: prometheus.Labels{"status": status},
		}, func() float64 {
			if w := liveWorker(); w != nil {
				return float64(n(w))
			}
			return 0
		})
	}
	oldest := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: ns, Subsystem: sub, Name: "queue_oldest_age_seconds",
		Help: "Age of the oldest pending queued delivery, in seconds; 0 when none is pending.",
	}, func() float64 {
		w := liveWorker()
		if w == nil || w.oldest.Load() == 0 {
			return 0
		}
		return time.Since(time.Unix(0, w.oldest.Load())).Seconds()
	})
	scans := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "queue_scans_total",
		Help: "Scans of the queue in storage completed by the running config's redelivery worker (it restarts from 0 with a reload).",
	}, func() float64 {
		if w := liveWorker(); w != nil {
			return float64(w.scanned.Load())
		}
		return 0
	})
	pm.collectors = []prometheus.Collector{pm.requests, pm.events, pm.duration, pm.entries, pm.evictions,
		pm.redeliver, pm.paused, oldest, scans,
		queueGauge(ItemPending, func(w *worker) int64 { return w.pending.Load() }),
		queueGauge(ItemDead, func(w *worker) int64 { return w.dead.Load() }),
	}
}

// registerMetrics registers the process's collectors on reg and returns a
// recorder for them. A collector reg already holds is used as it is. A nil
// reg (or nil *prometheus.Registry) registers nothing; the recorder still
// works.
func registerMetrics(reg prometheus.Registerer) (*metrics, error) {
	processMetrics.once.Do(initProcessMetrics)
	pm := &processMetrics
	m := &metrics{requests: pm.requests, events: pm.events, duration: pm.duration, redeliveries: pm.redeliver, paused: pm.paused}
	if r, ok := reg.(*prometheus.Registry); ok && r == nil {
		reg = nil
	}
	if reg != nil {
		for _, c := range pm.collectors {
			existing, err := register(reg, c)
			if err != nil {
				return nil, err
			}
			// Use what reg already exports, so observations show there.
			switch c {
			case pm.requests:
				m.requests, err = as[*prometheus.CounterVec](existing)
			case pm.events:
				m.events, err = as[*prometheus.CounterVec](existing)
			case pm.duration:
				m.duration, err = as[prometheus.Observer](existing)
			case pm.redeliver:
				m.redeliveries, err = as[*prometheus.CounterVec](existing)
			case pm.paused:
				m.paused, err = as[*prometheus.GaugeVec](existing)
			}
			if err != nil {
				return nil, err
			}
		}
	}

	var err error
	if m.verified, err = m.requests.GetMetricWithLabelValues(outcomeVerified, ""); err != nil {
		return nil, err
	}
	m.byState = make([][2]prometheus.Counter, len(verify.States)+1)
	for i := range m.byState {
		state := stateUnknown
		if i < len(verify.States) {
			state = verify.States[i]
		}
		for test := range 2 {
			if m.byState[i][test], err = m.events.GetMetricWithLabelValues(state, strconv.FormatBool(test == 1)); err != nil {
				return nil, err
			}
		}
	}
	cache := map[requestLabels]prometheus.Counter{{outcomeVerified, ""}: m.verified}
	m.counter.Store(&cache)
	return m, nil
}

// register registers c on reg and returns the collector reg exports.
func register(reg prometheus.Registerer, c prometheus.Collector) (prometheus.Collector, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		return are.ExistingCollector, nil
	}
	return nil, fmt.Errorf("registering reready_verify metrics: %w", err)
}

func as[T any](c prometheus.Collector) (T, error) {
	v, ok := c.(T)
	if !ok {
		var zero T
		return zero, fmt.Errorf("registering reready_verify metrics: a different collector (%T) is registered under the same name", c)
	}
	return v, nil
}

// observe counts a request's decision and how long it took since handler
// entry. reason is "" for verified requests, else a Reason code.
func (m *metrics) observe(outcome, reason string, d time.Duration) {
	if m == nil {
		return
	}
	m.duration.Observe(d.Seconds())
	if outcome == outcomeVerified && reason == "" {
		m.verified.Inc()
		return
	}
	m.requestCounter(outcome, reason).Inc()
}

// requestCounter resolves requests{outcome,reason}, caching it.
func (m *metrics) requestCounter(outcome, reason string) prometheus.Counter {
	l := requestLabels{outcome, reason}
	if c, ok := (*m.counter.Load())[l]; ok {
		return c
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.counter.Load()
	if c, ok := old[l]; ok {
		return c
	}
	c := m.requests.WithLabelValues(outcome, reason)
	if len(old) < maxCachedLabels {
		cache := maps.Clone(old)
		cache[l] = c
		m.counter.Store(&cache)
	}
	return c
}

// event counts a verified event by state (undocumented states as unknown)
// and test flag.
func (m *metrics) event(state string, test bool) {
	if m == nil {
		return
	}
	i := verify.StateIndex(state) // len(verify.States): unknown
	t := 0
	if test {
		t = 1
	}
	m.byState[i][t].Inc()
}

// redelivery counts one redelivery attempt's result.
func (m *metrics) redelivery(result string, probe bool) {
	if m == nil {
		return
	}
	m.redeliveries.WithLabelValues(result, strconv.FormatBool(probe)).Inc()
}

// setPaused sets caddy_reready_paused to 1 for each of paths, and drops
// the paths no longer paused.
func (m *metrics) setPaused(paths []string) {
	if m == nil {
		return
	}
	m.paused.Reset()
	for _, p := range paths {
		m.paused.WithLabelValues(p).Set(1)
	}
}

// liveWorker is the running config's redelivery worker, if any.
func liveWorker() *worker {
	if a := liveApp.Load(); a != nil {
		return a.worker.Load()
	}
	return nil
}
