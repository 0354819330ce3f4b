package rereadyverify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"
)

// This file is the delivery history: every journal entry written to
// Caddy's configured storage as well, in batches, so that gateways sharing
// the storage share one history that outlives their processes; and, with
// `bodies`, each verified delivery's body and the trusted headers it was
// sent with. The memory journal stays the live view; queries (history_query.go)
// read both.
//
// Storage layout, under reready_verify/history/:
//
//	<YYYY-MM-DDTHH>/<node>-<epoch>-<first seq>.json   one batch: entries of that UTC hour
//	bodies/<YYYY-MM-DDTHH>/<node>-<epoch>-<n>_<t1>-<t2>.json
//	                                                   one pack: bodies whose ids' t (unix
//	                                                   seconds t1 to t2) fall in that hour
//	late/<YYYY-MM-DDTHH>/<node>-<epoch>-<first seq>.json
//	                                                   the late index: for deliveries whose
//	                                                   ids' t fall in that hour, the hours
//	                                                   of their entries recorded over
//	                                                   historyLateAfter later
//	swept                                              when the fleet last swept
//
// A batch holds the entries of one process (node and journal epoch) of one
// hour, so its key is unique and is never written twice by two gateways;
// reading a range or sweeping lists only the hours concerned. Bodies are
// written a pack per flush (history_bodies.go): a delivery's id names the
// hour folder, and the pack's name the span of ids' times it holds, so a
// body is found by listing one folder and reading the packs whose span
// holds it.
//
// Nothing here sits on the request path: App.record appends the entry to
// a bounded buffer in memory (no allocation, no storage call); a flusher
// goroutine writes it within historyFlushInterval. A write that fails is
// retried at the next flush; past historyPendingMax entries waiting, the
// oldest are dropped, counted in caddy_reready_history_writes_total and
// logged once per outage. A crash loses what was not yet flushed: at most
// the last historyFlushInterval of entries (more while the storage fails).

// HistoryConfig is the `history` option of the reready app: the journal
// kept in Caddy's storage, shared by the gateways that share it.
type HistoryConfig struct {
	// How long entries (and bodies) are kept; whole hours past it are
	// removed. Default: 30d. At least 1h.
	Keep caddy.Duration `json:"keep,omitempty"`

	// Also keep each verified delivery's exact body and the trusted
	// X-ReReady-* headers it was sent with (never the signature header,
	// the token or a MAC), once per delivery id. Default: off.
	Bodies bool `json:"bodies,omitempty"`
}

const (
	// DefaultHistoryKeep is how long history is kept by default.
	DefaultHistoryKeep = 30 * 24 * time.Hour

	historyPrefix       = "reready_verify/history"
	historyBodiesPrefix = historyPrefix + "/bodies"
	historyLatePrefix   = historyPrefix + "/late"
	historySweepKey     = historyPrefix + "/swept"
	historyHourLayout   = "2006-01-02T15"

	// historyFlushInterval is how often the buffer is written.
	historyFlushInterval = 2 * time.Second
	// historyBatchMax bounds one batch; a buffer this full is written at
	// once.
	historyBatchMax = 2000
	// historyBufferMax bounds the entries waiting in the buffer (while a
	// flush is stuck in a slow write); past it, the oldest quarter goes.
	historyBufferMax = 100_000
	// historyPendingMax bounds the entries of failed batches kept for the
	// next flush; past it, the oldest batches are dropped.
	historyPendingMax = 100_000
	// historyBodyBytesMax bounds the body bytes waiting to be written.
	historyBodyBytesMax = 64 << 20
	// historyStopWait bounds the last flush when the app stops.
	historyStopWait = 5 * time.Second
	// historySweepInterval is how often the fleet removes what is past
	// keep (one gateway sweeps; the others find the sweep recent).
	historySweepInterval = 5 * time.Minute
	// historyLockWait bounds the wait for the sweep's storage lock.
	historyLockWait = 5 * time.Second
	// historyDeliveryWindow is how long after a delivery's t
	// GET /deliveries/{id} reads every hour for its entries; an entry
	// recorded later than historyLateAfter (a redelivery hours later, a
	// replay days later) is found through the late index instead.
	historyDeliveryWindow = 2 * time.Hour
	historyLateAfter      = time.Hour
)

// Results of writes, the result label of
// caddy_reready_history_writes_total.
const (
	historyWritten = "written" // entries stored
	historyFailed  = "failed"  // entries of a write that failed (retried: counted at each try)
	historyDropped = "dropped" // entries given up on, past the bound
)

// historyWrites is caddy_reready_history_writes_total, created once per
// process.
var historyWrites = sync.OnceValue(func() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "reready", Name: "history_writes_total",
		Help: "Journal entries written to the history in Caddy's storage, by result: written; failed (in a write that failed, retried at the next flush, so counted at each try); dropped (given up on while the storage failed, past the bound).",
	}, []string{"result"})
})

// registerHistoryMetrics registers historyWrites on reg and returns the
// counter vector reg exports.
func registerHistoryMetrics(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	return registerOn(reg, historyWrites())
}

// registerOn registers a process-wide collector c on a config's registry
// reg (none: c itself) and returns the one reg exports.
func registerOn[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	if r, ok := reg.(*prometheus.Registry); reg == nil || ok && r == nil {
		return c, nil
	}
	existing, err := register(reg, c)
	if err != nil {
		var zero T
		return zero, err
	}
	return as[T](existing)
}

// nodeName names this gateway in the history: Caddy's instance id (kept
// in its data directory), else the host name. Tests replace it; use
// thisNode.
var nodeName = sync.OnceValue(func() string {
	if id, err := caddy.InstanceID(); err == nil {
		return id.String()
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "unknown"
})

// thisNode is this process's node as entries and batch names carry it.
func thisNode() string { return safeNode(nodeName()) }

// safeNode keeps a node name usable in a storage key.
func safeNode(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', r == '.', r == '_', r == '-':
			return r
		}
		return '_'
	}, s)
	return verify.Clip(s, 64)
}

// historyBatch is a batch as stored.
type historyBatch struct {
	Node    string     `json:"node"`
	Epoch   string     `json:"epoch"`
	Entries []Delivery `json:"entries"`
}

// storedBatch is a batch ready to write (or waiting to be written again).
type storedBatch struct {
	key     string
	data    []byte
	entries int
}

// history writes a config's journal entries to storage. Its add and
// keep* methods are safe for concurrent use; a nil *history does nothing.
type history struct {
	storage certmagic.Storage
	logger  *zap.Logger
	node    string
	epoch   string
	keep    time.Duration
	bodies  bool
	writes  *prometheus.CounterVec
	now     func() time.Time

	pendingMax int // historyPendingMax; tests lower it

	mu          sync.Mutex
	buf         []journalEntry          // not yet batched, oldest first
	spare       []journalEntry          // the flusher's last buffer, reused
	kept        keptBodies              // bodies not yet written
	keptDropped int                     // bodies dropped from kept since the last flush
	storedBody  map[deliveryID]struct{} // bodies known stored
	packSeq     int                     // packs named so far
	packCap     int                     // the size the next pack's buffer starts with
	freeBufs    [][]byte                // written packs' buffers, for the next packs
	reuseBufs   bool                    // the storage keeps no written value's bytes (file_system)
	dropped     int                     // dropped from buf since the last flush
	closed      bool                    // stopped: add and keepRecord refuse

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
	once sync.Once

	// The flusher's own (flushMu: the flusher and the last flush at stop).
	flushMu      sync.Mutex
	pending      []storedBatch // failed batches, oldest first
	pendingPacks []storedPack  // packs whose write failed, oldest first
	failing      bool          // a write failed and none succeeded since
	droppedLog   bool          // drops were logged this outage
}

func newHistory(cfg *HistoryConfig, st certmagic.Storage, logger *zap.Logger, epoch string, writes *prometheus.CounterVec) *history {
	keep := time.Duration(cfg.Keep)
	if keep <= 0 {
		keep = DefaultHistoryKeep
	}
	if writes == nil {
		writes = historyWrites()
	}
	// A written pack's buffer is used again for a later pack (writing into
	// a fresh buffer of megabytes costs a page fault every few bodies) only
	// when the storage is known not to hold on to the bytes it was given:
	// file_system writes them to a file; another storage might keep them.
	_, reuse := st.(*certmagic.FileStorage)
	return &history{
		reuseBufs: reuse,
		storage:   st, logger: logger, node: thisNode(), epoch: epoch, keep: keep, bodies: cfg.Bodies,
		writes: writes, now: time.Now, pendingMax: historyPendingMax,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		storedBody: map[deliveryID]struct{}{}, packCap: 4096,
	}
}

// validate checks the configuration.
func (c *HistoryConfig) validate() error {
	if c == nil {
		return nil
	}
	if k := time.Duration(c.Keep); k != 0 && k < time.Hour {
		return fmt.Errorf("reready: history keep %s: want at least 1h (history is kept and removed by the hour)", k)
	}
	return nil
}

// add queues a journal entry, as the journal stored it, for the next
// flush. It never blocks on storage and, once the buffer has grown, does
// not allocate. It reports false, keeping nothing, once the history has
// stopped (App.record then hands the entry to the running config's).
func (h *history) add(e journalEntry) bool {
	if h == nil {
		return true
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return false
	}
	if len(h.buf) >= historyBufferMax {
		n := historyBufferMax / 4
		copy(h.buf, h.buf[n:])
		clear(h.buf[len(h.buf)-n:])
		h.buf = h.buf[:len(h.buf)-n]
		h.dropped += n
	}
	h.buf = append(h.buf, e)
	full := len(h.buf) == historyBatchMax
	h.mu.Unlock()
	if full {
		select {
		case h.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// start runs the flusher and the sweeper until stop.
func (h *history) start() {
	if h == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(historyFlushInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			case <-h.wake:
			}
			fctx, fcancel := context.WithTimeout(ctx, time.Minute)
			h.flush(fctx)
			fcancel()
		}
	}()
	go func() {
		defer wg.Done()
		h.sweepLoop(ctx)
	}()
	go func() {
		<-h.stop
		cancel()
		wg.Wait()
		close(h.done)
	}()
}

// stopAndFlush stops the flusher and the sweeper and writes what is
// buffered, waiting at most historyStopWait.
func (h *history) stopAndFlush() {
	if h == nil {
		return
	}
	h.once.Do(func() {
		h.mu.Lock()
		h.closed = true // what comes later goes to the running config's history
		h.mu.Unlock()
		close(h.stop)
		ctx, cancel := context.WithTimeout(context.Background(), historyStopWait)
		defer cancel()
		select {
		case <-h.done:
		case <-ctx.Done():
		}
		h.flush(ctx)
		h.flushMu.Lock()
		if n := pendingEntries(h.pending); n > 0 {
			h.logger.Error("history: entries not written to storage before the config stopped; they are lost", zap.Int("entries", n))
			h.writes.WithLabelValues(historyDropped).Add(float64(n))
		}
		h.flushMu.Unlock()
	})
}

// hourOf is the name of t's hour folder.
func hourOf(t time.Time) string { return t.UTC().Format(historyHourLayout) }

// flush writes the buffer as batches, after the batches of earlier
// flushes that failed, and then the bodies. It stops at the first failed
// write (the storage is likely down): the rest waits for the next flush.
func (h *history) flush(ctx context.Context) {
	h.flushMu.Lock()
	defer h.flushMu.Unlock()

	h.mu.Lock()
	buf, dropped := h.buf, h.dropped
	h.buf, h.dropped = h.spare[:0], 0
	h.mu.Unlock()

	h.pending = append(h.pending, h.batches(buf)...)
	clear(buf)
	h.mu.Lock()
	h.spare = buf[:0]
	h.mu.Unlock()

	if over := pendingEntries(h.pending) - h.pendingMax; over > 0 {
		for over > 0 && len(h.pending) > 0 {
			over -= h.pending[0].entries
			dropped += h.pending[0].entries
			h.pending = h.pending[1:]
		}
	}
	if dropped > 0 {
		h.writes.WithLabelValues(historyDropped).Add(float64(dropped))
		if !h.droppedLog {
			h.droppedLog = true
			h.logger.Error("history: dropping the oldest entries not yet written to storage",
				zap.Int("dropped", dropped), zap.Int("bound", h.pendingMax))
		}
	}

	for len(h.pending) > 0 {
		b := h.pending[0]
		if err := h.storage.Store(ctx, b.key, b.data); err != nil {
			h.writes.WithLabelValues(historyFailed).Add(float64(b.entries))
			h.failed(err)
			break
		}
		h.writes.WithLabelValues(historyWritten).Add(float64(b.entries))
		h.pending[0] = storedBatch{}
		h.pending = h.pending[1:]
		h.recovered()
	}
	if len(h.pending) == 0 {
		h.pending = nil
	}

	h.writeBodies(ctx, len(h.pending) > 0)
}

// failed notes a failed write, logging the first of an outage.
func (h *history) failed(err error) {
	if !h.failing {
		h.failing = true
		h.logger.Error("history: writing to storage failed; entries are kept in memory and written again at the next flush",
			zap.Int("waiting", pendingEntries(h.pending)), zap.Error(err))
	}
}

// recovered notes a write that worked after an outage.
func (h *history) recovered() {
	if h.failing {
		h.failing, h.droppedLog = false, false
		h.logger.Info("history: writing to storage works again")
	}
}

func pendingEntries(bs []storedBatch) int {
	n := 0
	for _, b := range bs {
		n += b.entries
	}
	return n
}

// batches turns buffered entries into batches: one per hour of their
// times, of at most historyBatchMax entries, encoded as historyBatch.
func (h *history) batches(buf []journalEntry) []storedBatch {
	var out []storedBatch
	for len(buf) > 0 {
		hour := hourOf(buf[0].at)
		n := 1
		for n < len(buf) && n < historyBatchMax && hourOf(buf[n].at) == hour {
			n++
		}
		data := h.appendBatchHead(make([]byte, 0, n*400+128), "entries")
		for i := range n {
			if i > 0 {
				data = append(data, ',')
			}
			data = appendDeliveryJSON(data, &buf[i], h.node)
		}
		data = append(data, "]}"...)
		key := fmt.Sprintf("%s/%s/%s-%s-%d.json", historyPrefix, hour, h.node, h.epoch, buf[0].seq)
		out = append(out, storedBatch{key: key, data: data, entries: n})
		out = append(out, h.lateIndex(buf[:n], hour)...)
		buf = buf[n:]
	}
	return out
}

// lateRef is an entry of the late index: delivery id's entries are (also)
// in the hour folder hour.
type lateRef struct {
	ID   string `json:"id"`
	Hour string `json:"hour"`
}

// lateIndex is the late index of a batch of entries of hour: for each
// delivery with an entry recorded over historyLateAfter after its id's t,
// a reference from the hour of that t to hour, one object per hour of t.
// It is written after the batch it points to, so a reference never names
// an hour that does not hold the entry yet.
func (h *history) lateIndex(entries []journalEntry, hour string) []storedBatch {
	var byHour map[string][]lateRef
	for i := range entries {
		e := &entries[i]
		if e.id.isZero() || e.at.Sub(time.Unix(e.id.t, 0)) <= historyLateAfter {
			continue
		}
		idHour := hourOf(time.Unix(e.id.t, 0))
		if byHour == nil {
			byHour = map[string][]lateRef{}
		}
		ref := lateRef{e.id.String(), hour}
		if !slices.Contains(byHour[idHour], ref) {
			byHour[idHour] = append(byHour[idHour], ref)
		}
	}
	var out []storedBatch
	for idHour, refs := range byHour {
		data, err := json.Marshal(refs)
		if err != nil {
			continue
		}
		key := fmt.Sprintf("%s/%s/%s-%s-%d.json", historyLatePrefix, idHour, h.node, h.epoch, entries[0].seq)
		out = append(out, storedBatch{key: key, data: data})
	}
	return out
}

// appendBatchHead appends the start of a stored object of this process
// holding a list (entries, or a pack's bodies): {"node":…,"epoch":…,"list":[
// the caller appends the items, then "]}".
func (h *history) appendBatchHead(dst []byte, list string) []byte {
	dst = append(dst, `{"node":`...)
	dst = appendJSONString(dst, h.node)
	dst = append(dst, `,"epoch":`...)
	dst = appendJSONString(dst, h.epoch)
	dst = append(dst, `,"`...)
	dst = append(dst, list...)
	return append(dst, `":[`...)
}

// appendDeliveryJSON appends e as the JSON of its Delivery view with
// node: what json.Marshal(e.view()) writes, without its reflection and
// allocations (TestHistoryDeliveryJSON holds the two equal).
func appendDeliveryJSON(dst []byte, e *journalEntry, node string) []byte {
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, e.seq, 10)
	dst = append(dst, `,"time":"`...)
	dst = e.at.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","delivery_id":"`...)
	if !e.id.isZero() {
		dst = e.id.appendTo(dst)
	}
	dst = append(dst, `","outcome":`...)
	dst = appendJSONString(dst, e.outcome)
	dst = append(dst, `,"reason":`...)
	dst = appendJSONString(dst, string(e.reason))
	dst = append(dst, `,"status":`...)
	dst = strconv.AppendInt(dst, int64(e.status), 10)
	dst = append(dst, `,"upstream_status":`...)
	dst = strconv.AppendInt(dst, int64(e.upstreamStatus), 10)
	dst = append(dst, `,"attempt":`...)
	dst = strconv.AppendInt(dst, int64(e.attempt), 10)
	dst = append(dst, `,"probe":`...)
	dst = strconv.AppendBool(dst, e.probe)
	dst = append(dst, `,"device_return_id":`...)
	dst = appendJSONString(dst, e.returnID.peek())
	dst = append(dst, `,"state":`...)
	dst = appendJSONString(dst, e.state)
	dst = append(dst, `,"test":`...)
	dst = strconv.AppendBool(dst, e.test)
	dst = append(dst, `,"verified":`...)
	dst = appendJSONString(dst, e.verified)
	dst = append(dst, `,"key":`...)
	dst = strconv.AppendInt(dst, int64(e.key), 10)
	dst = append(dst, `,"duration_ms":`...)
	dst = appendJSONFloat(dst, float64(e.duration.Microseconds())/1000)
	dst = append(dst, `,"host":`...)
	dst = appendJSONString(dst, e.host)
	dst = append(dst, `,"path":`...)
	dst = appendJSONString(dst, e.path)
	dst = append(dst, `,"remote_addr":`...)
	dst = appendJSONString(dst, e.remoteAddr)
	dst = append(dst, `,"node":`...)
	dst = appendJSONString(dst, node)
	return append(dst, '}')
}

// appendJSONFloat appends f as encoding/json writes a float64.
func appendJSONFloat(dst []byte, f float64) []byte {
	if a := math.Abs(f); a != 0 && (a < 1e-6 || a >= 1e21) || math.IsNaN(f) || math.IsInf(f, 0) {
		data, err := json.Marshal(f)
		if err != nil {
			return append(dst, '0')
		}
		return append(dst, data...)
	}
	return strconv.AppendFloat(dst, f, 'f', -1, 64)
}

// ---------------------------------------------------------------------
// Sweeping

// sweepLoop sweeps now and then until ctx ends.
func (h *history) sweepLoop(ctx context.Context) {
	// A little after start, so a fleet's gateways started together do
	// not all try at once; then every interval.
	var spread uint32
	for _, c := range []byte(h.node) { // node names are equally long (UUIDs): spread by content
		spread = spread*31 + uint32(c)
	}
	first := time.NewTimer(historyFlushInterval + time.Duration(spread%7)*time.Second)
	defer first.Stop()
	select {
	case <-ctx.Done():
		return
	case <-first.C:
	}
	tick := time.NewTicker(historySweepInterval)
	defer tick.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		if n, err := h.sweep(sctx); err != nil && ctx.Err() == nil {
			h.logger.Warn("history: sweeping storage", zap.Int("deleted", n), zap.Error(err))
		} else if n > 0 {
			h.logger.Debug("history: swept storage", zap.Int("hours_deleted", n))
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// sweep deletes the hour folders (entries and bodies) wholly past keep,
// unless another gateway swept within the interval. It holds the sweep's
// storage lock, taken without waiting for another holder; the lock is
// advisory, and deleting a folder twice is harmless.
func (h *history) sweep(ctx context.Context) (deleted int, err error) {
	lctx, cancel := context.WithTimeout(ctx, historyLockWait)
	defer cancel()
	unlock, ok, err := tryLockStorage(lctx, h.storage, historySweepKey)
	if err != nil || !ok {
		return 0, err
	}
	defer unlock(ctx, h.logger)
	now := h.now()
	if data, err := h.storage.Load(ctx, historySweepKey); err == nil {
		if last, perr := strconv.ParseInt(string(data), 10, 64); perr == nil && now.UnixNano()-last < int64(historySweepInterval)/2 && now.UnixNano() >= last {
			return 0, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	cutoff := now.Add(-h.keep)
	for _, prefix := range []string{historyPrefix, historyBodiesPrefix, historyLatePrefix} {
		hours, err := listHours(ctx, h.storage, prefix)
		if err != nil {
			return deleted, err
		}
		for _, hr := range hours {
			if hr.start.Add(time.Hour).After(cutoff) {
				continue
			}
			if err := h.storage.Delete(ctx, hr.key); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return deleted, fmt.Errorf("deleting %s: %w", hr.key, err)
			}
			deleted++
		}
	}
	return deleted, h.storage.Store(ctx, historySweepKey, strconv.AppendInt(nil, now.UnixNano(), 10))
}

// historyHour is an hour folder.
type historyHour struct {
	key   string
	start time.Time
}

// hourName matches an hour folder's name.
var hourName = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}$`)

// listHours lists the hour folders under prefix, in no set order. A
// listing that fails is an error, never an empty list.
func listHours(ctx context.Context, st certmagic.Storage, prefix string) ([]historyHour, error) {
	keys, err := listKeys(ctx, st, prefix)
	if err != nil {
		return nil, err
	}
	var out []historyHour
	for _, k := range keys {
		name := baseName(k)
		if !hourName.MatchString(name) {
			continue
		}
		t, err := time.Parse(historyHourLayout, name)
		if err != nil {
			continue
		}
		out = append(out, historyHour{key: prefix + "/" + name, start: t})
	}
	return out, nil
}
