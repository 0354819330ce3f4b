package rereadyverify

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(new(App))
}

// App is the `reready` app: what outlives a request. It owns the delivery
// journal (per process, kept across reloads) and, when a reready_verify
// handler has `queue` on, the worker that redelivers queued deliveries
// from Caddy's storage. Handlers load it; configuring it is optional:
//
//	{
//		reready {
//			journal_size <n>
//		}
//	}
//
// Events it emits through Caddy's events app: reready.queued,
// reready.redelivered and reready.dead, with data id, device_return_id,
// state, test, attempt, status and error; reready.paused and
// reready.resumed (pause.go), with data path, since and by.
type App struct {
	// Most journal entries kept in memory, per process; the oldest go
	// first. Default: 10000.
	JournalSize int `json:"journal_size,omitempty"`

	// Keep the journal in Caddy's storage as well (history.go). Default:
	// off.
	History *HistoryConfig `json:"history,omitempty"`

	ctx     caddy.Context
	logger  *zap.Logger
	journal *journal
	queue   *queue
	events  *caddyevents.App
	metrics *metrics
	queueOn bool
	// The largest max_age and max_items of the handlers with queue on.
	queueMaxAge   time.Duration
	queueMaxItems int
	replays       prometheus.Counter // caddy_reready_replays_total
	starts        []func()           // background work of handlers, started with the config
	history       *history           // nil without the history option
	pause         pauseCache

	// Set by Start; read by handlers, which may serve before it runs
	// (Caddy starts apps in no set order).
	worker atomic.Pointer[worker]
	routes atomic.Pointer[routing]
	prev   atomic.Pointer[App] // the app that was live before this one

	// Seams for in-process tests of the worker and of redelivery: the
	// clock (nil: time.Now) and the route an item is sent through (nil:
	// the running config's server it arrived on, see server).
	clock    func() time.Time
	routeFor func(server string, port int) http.Handler
}

// routing is the running config's HTTP servers, by name and the reverse.
type routing struct {
	servers map[string]*caddyhttp.Server
	names   map[*caddyhttp.Server]string
}

// liveApp is the app of the running config, for the admin API (admin
// modules are provisioned before the apps on every load, so they look it
// up per request). A reload starts the new app before stopping the old.
var liveApp atomic.Pointer[App]

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "reready",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision sets the app up. It starts nothing: `caddy validate`
// provisions without starting.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	a.journal = processJournal
	a.queue = newQueue(bounded(ctx.Storage()), a.logger)
	ev, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("reready: loading the events app: %v", err)
	}
	a.events, _ = ev.(*caddyevents.App)
	if a.metrics, err = registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("reready: metrics: %v", err)
	}
	if a.History != nil {
		writes, err := registerHistoryMetrics(ctx.GetMetricsRegistry())
		if err != nil {
			return fmt.Errorf("reready: metrics: %v", err)
		}
		a.history = newHistory(a.History, bounded(ctx.Storage()), a.logger, a.journal.epoch, writes)
	}
	if a.replays, err = registerReplayMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("reready: metrics: %v", err)
	}
	return nil
}

// Validate checks the configuration.
func (a *App) Validate() error {
	if a.JournalSize < 0 || a.JournalSize > maxJournalSize {
		return fmt.Errorf("reready: journal_size %d: want 1 to %d (0 for the default, %d)", a.JournalSize, maxJournalSize, DefaultJournalSize)
	}
	return a.History.validate()
}

// useQueue is called by a handler with `queue` on, while provisioning. A
// replay (replay_range.go) queues with the largest max_age and max_items
// of the config's handlers.
func (a *App) useQueue(q *QueueConfig) {
	a.queueOn = true
	a.queueMaxAge = max(a.queueMaxAge, time.Duration(q.MaxAge))
	a.queueMaxItems = max(a.queueMaxItems, q.MaxItems)
}

// startWithConfig has a handler's background work (the storage replay
// sweep) start when the config starts, not when it is provisioned. The
// handler's Cleanup stops it.
func (a *App) startWithConfig(start func()) { a.starts = append(a.starts, start) }

// Start sizes the journal and, when a handler queues, starts the
// redelivery worker.
func (a *App) Start() error {
	a.journal.resize(a.JournalSize)
	if httpApp, err := a.ctx.AppIfConfigured("http"); err == nil {
		if h, ok := httpApp.(*caddyhttp.App); ok {
			rt := &routing{servers: h.Servers, names: make(map[*caddyhttp.Server]string, len(h.Servers))}
			for name, srv := range h.Servers {
				rt.names[srv] = name
			}
			a.routes.Store(rt)
		}
	}
	for _, start := range a.starts {
		start()
	}
	a.history.start()
	if a.queueOn {
		w := newWorker(a, a.queue, a.logger)
		a.worker.Store(w)
		w.start()
	} else {
		// The paused gauge is the worker's view of the pause state; with
		// no worker, none (not a previous config's, left standing).
		a.metrics.setPaused(nil)
	}
	a.prev.Store(liveApp.Swap(a))
	return nil
}

// Stop ends the worker; queued deliveries stay in storage for the next
// config (or another gateway). If this app is still the live one (its
// config failed to start, so the previous config runs on), the previous
// app is live again.
func (a *App) Stop() error {
	prev := a.prev.Swap(nil)
	if !liveApp.CompareAndSwap(a, prev) {
		// A newer config runs; it no longer needs this app to fall back on.
		if cur := liveApp.Load(); cur != nil {
			cur.prev.CompareAndSwap(a, nil)
		}
	}
	a.worker.Load().stop()
	a.history.stopAndFlush()
	return nil
}

// server returns the running config's server for a queued delivery: the
// one listening on the port the delivery arrived on (Caddyfile server
// names, srv0, srv1…, can change when sites are added), preferring the
// one of the same name; when no server listens there (a gateway of the
// fleet listening on other ports), the one of that name.
func (a *App) server(name string, port int) *caddyhttp.Server {
	rt := a.routes.Load()
	if rt == nil {
		return nil
	}
	if port <= 0 {
		return rt.servers[name]
	}
	var found *caddyhttp.Server
	for n, srv := range rt.servers {
		for _, l := range srv.Listen {
			na, err := caddy.ParseNetworkAddress(l)
			if err != nil || na.IsUnixNetwork() || uint(port) < na.StartPort || uint(port) > na.EndPort {
				continue
			}
			if n == name {
				return srv
			}
			found = srv
		}
	}
	if found == nil {
		found = rt.servers[name]
	}
	return found
}

// serverOf names the server a live request came through and the local
// port it arrived on (0 when unknown).
func (a *App) serverOf(r *http.Request) (name string, port int) {
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	switch addr := r.Context().Value(http.LocalAddrContextKey).(type) {
	case *net.TCPAddr:
		port = addr.Port
	case net.Addr:
		if _, p, err := net.SplitHostPort(addr.String()); err == nil {
			port, _ = strconv.Atoi(p)
		}
	}
	if rt := a.routes.Load(); rt != nil {
		name = rt.names[srv]
	}
	return name, port
}

// now is the app's clock.
func (a *App) now() time.Time {
	if a.clock != nil {
		return a.clock()
	}
	return time.Now()
}

// route is what a redelivery of an item that arrived through server
// (on port) is sent through: the running config's server, or nil when no
// server of it takes the item.
func (a *App) route(server string, port int) http.Handler {
	if a.routeFor != nil {
		return a.routeFor(server, port)
	}
	if srv := a.server(server, port); srv != nil {
		return srv
	}
	return nil
}

// queued tells the worker a delivery was stored here.
func (a *App) queued() { a.worker.Load().wake() }

// failed tells the worker a live delivery on path failed at now, the app
// answering Retry-After ra (if any): the route is probed from now on.
func (a *App) failed(path string, now time.Time, ra string) {
	a.worker.Load().failed(path, now, ra, false)
}

// changed tells the worker an operator changed item id: it reads it
// afresh, now.
func (a *App) changed(id string) {
	w := a.worker.Load()
	w.forget(id)
	w.wake()
}

// kick tells the worker a delivery on path succeeded.
func (a *App) kick(path string) { a.worker.Load().kick(path) }

// emit sends a Caddy event about an item. Its data never holds a body,
// header or secret.
func (a *App) emit(name string, it *queueItem, res attemptResult) {
	if a.events == nil {
		return
	}
	a.events.Emit(a.ctx, name, map[string]any{
		"id":               it.ID,
		"device_return_id": it.DeviceReturnID,
		"state":            it.State,
		"test":             it.Test,
		"attempt":          it.Attempts,
		"status":           res.status,
		"error":            it.LastError,
	})
}

// queueView lists the storage's queue, for the views, with what this
// gateway knows of each item's route.
func (a *App) queueView(ctx context.Context) ([]QueueItem, error) {
	items, err := a.queue.view(ctx)
	if err != nil {
		return nil, err
	}
	w := a.worker.Load()
	for i := range items {
		if since := w.failingSince(items[i].Path); !since.IsZero() {
			s := since.UTC().Format(time.RFC3339)
			items[i].AppFailingSince = &s
		}
	}
	return items, nil
}

// Interface guards
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
	_ caddy.Validator   = (*App)(nil)
)
