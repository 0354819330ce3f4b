package rereadyverify

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"
)

// This file is the kept bodies of `history { bodies }`: what is kept of a
// verified delivery (its exact body, the trusted headers it was sent with,
// its route), how the flusher writes them and how queries and replays find
// them again.
//
// Bodies are written in packs, not one storage object each: one pack per
// flush and per hour of the ids' t (a delivery id starts with its t), at
// most historyPackMax bodies or about historyPackBytesMax bytes. A body is
// encoded into the pack being filled when it is kept, so the flusher writes
// the pack as it is. At 8,000 deliveries a second, one object per body cost
// the gateway 11 % of its throughput and could not keep up; packs cost
// under 1 % (bench/load-history.sh, BENCHMARKS.md). A pack is named
//
//	bodies/<hour of the ids' t>/<node>-<epoch>-<n>_<t1>-<t2>.json
//
// n counting this process's packs and t1..t2 the span (unix seconds) of
// the ids' t it holds: a delivery's body is found by listing its hour's
// folder and reading only the packs whose span holds its t.
//
// A body is kept once per delivery id (the first the app got); a body
// written twice (a pack retried after a write that failed late, or kept by
// two gateways) is read as the one kept first.

const (
	// historyPackMax bounds the bodies of one pack.
	historyPackMax = 2000
	// historyPackBytesMax bounds the body bytes of one pack (a pack of
	// one larger body is still written).
	historyPackBytesMax = 4 << 20
)

// historyBody is a kept body as stored: what a replay needs to send the
// delivery again through its route.
type historyBody struct {
	DeliveryID string            `json:"delivery_id"`
	Node       string            `json:"node"`
	At         time.Time         `json:"at"`   // when it was kept
	Body       []byte            `json:"body"` // exact bytes
	Headers    map[string]string `json:"headers"`
	Host       string            `json:"host"`
	URI        string            `json:"uri"` // as the client sent it, without the token
	TLS        bool              `json:"tls"`
	Server     string            `json:"server"`
	Port       int               `json:"port"`
}

// bodyPack is a pack as stored (written by packs, read by findBodies).
type bodyPack struct {
	Node   string         `json:"node"`
	Epoch  string         `json:"epoch"`
	Bodies []*historyBody `json:"bodies"`
}

// ---------------------------------------------------------------------
// Keeping

// keepingBodies reports whether bodies are kept.
func (h *history) keepingBodies() bool { return h != nil && h.bodies }

// keepLive keeps a live delivery's body and the trusted headers it was
// forwarded with, when bodies are on: only a delivery that passed every
// check (its payload parsed) and got an id. r is the request as
// forwardable rewrote it. Off, it costs a nil check and a bool.
func (h *Handler) keepLive(r *http.Request, st *requestState) {
	if h.app == nil {
		return
	}
	hist := h.app.history
	if !hist.keepingBodies() || st == nil || st.id.isZero() || st.auth.reason != "" || st.auth.verified == "" || st.event.State == "" || st.body.buf == nil {
		return
	}
	rec := bodyRecord{id: st.id, body: st.body.buf, hdr: r.Header, host: r.Host, uri: h.uriWithoutToken(r, st), tls: r.TLS != nil}
	rec.server, rec.port = h.app.serverOf(r)
	if !hist.keepRecord(&rec) {
		// A request of a config that has stopped since (a reload): the
		// running config's history keeps it, if it keeps bodies.
		if cur := liveApp.Load(); cur != nil && cur != h.app && cur.history.keepingBodies() {
			cur.history.keepRecord(&rec)
		}
	}
}

// uriWithoutToken is the URI the client sent, without ?token= (as newItem
// makes a queue item's).
func (h *Handler) uriWithoutToken(r *http.Request, st *requestState) string {
	uri := originalURI(r)
	if st.auth.stripQuery {
		if path, query, ok := strings.Cut(uri, "?"); ok {
			query, _ = h.verifier.CheckToken(query)
			uri = path
			if query != "" {
				uri += "?" + query
			}
		}
	}
	return uri
}

// keepItem keeps a queued item's body, when bodies are on and the live
// path has not (a delivery queued as it arrived, or before bodies were
// on): its trusted headers are made again from its payload, as the live
// path set them.
func (h *history) keepItem(it *queueItem) {
	if !h.keepingBodies() || len(it.Body) == 0 {
		return
	}
	id, ok := parseDeliveryID(it.ID)
	if !ok {
		return
	}
	st := new(requestState)
	ev, err := verify.ParsePayloadInto(it.Body, st.strs[:0])
	if err != nil {
		return
	}
	st.event, st.id = ev, id
	st.auth = auth{verified: it.Verified, signed: it.Timestamp != ""}
	st.auth.sig.T = it.Timestamp
	hdr := http.Header{}
	setEventHeaders(hdr, st)
	h.keepRecord(&bodyRecord{id: id, body: it.Body, hdr: hdr, host: it.Host, uri: it.URI, tls: it.TLS, server: it.Server, port: it.Port})
}

// bodyRecord is what keep writes of a delivery; hdr's X-ReReady-* headers
// but the signature are the trusted headers kept.
type bodyRecord struct {
	id     deliveryID
	body   []byte
	hdr    http.Header
	host   string
	uri    string
	tls    bool
	server string
	port   int
}

// keptBodies is bodies waiting for the next flush, already encoded, in
// the packs they will be written as: the record of a body is appended to
// the open pack of its hour, which is sealed (closed and named) when full
// or at the flush. The packs hold bytes and numbers only, so that the
// collector has nothing to follow in them, and the flusher writes them as
// they are.
type keptBodies struct {
	open  []*storedPack // being filled, one per hour (nearly always one)
	ready []storedPack  // sealed, oldest first
	seen  map[deliveryID]struct{}
	bytes int // of open and ready
}

// keepRecord queues a body for the next flush, encoded. Past
// historyBodyBytesMax waiting (the flusher stuck in a slow write), bodies
// are dropped and counted in the log at the next flush. It reports false,
// keeping nothing, once the history has stopped.
func (h *history) keepRecord(rec *bodyRecord) bool {
	at := h.now().UTC()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	q := &h.kept
	if _, dup := q.seen[rec.id]; dup {
		return true // the first one the app got
	}
	if _, stored := h.storedBody[rec.id]; stored {
		return true
	}
	if q.bytes+len(rec.body) > historyBodyBytesMax {
		h.keptDropped++
		return true
	}
	if q.seen == nil {
		q.seen = map[deliveryID]struct{}{}
	}
	q.seen[rec.id] = struct{}{}
	hour := rec.id.t / 3600
	var p *storedPack
	for i, o := range q.open {
		if o.hour != hour {
			continue
		}
		if len(o.ids) < historyPackMax && len(o.data)+len(rec.body) < historyPackBytesMax {
			p = o
		} else {
			h.seal(i)
		}
		break
	}
	if p == nil {
		p = &storedPack{hour: hour, t1: rec.id.t, t2: rec.id.t}
		if n := len(h.freeBufs); n > 0 {
			p.data, h.freeBufs = h.freeBufs[n-1], h.freeBufs[:n-1]
		} else {
			p.data = make([]byte, 0, h.packCap)
		}
		p.data = h.appendBatchHead(p.data, "bodies")
		q.open = append(q.open, p)
	} else {
		p.data = append(p.data, ',')
	}
	n := len(p.data)
	p.data = appendBodyJSON(p.data, rec, h.node, at)
	q.bytes += len(p.data) - n
	p.ids = append(p.ids, rec.id)
	p.t1, p.t2 = min(p.t1, rec.id.t), max(p.t2, rec.id.t)
	return true
}

// seal closes and names the i-th open pack and moves it to ready (h.mu).
func (h *history) seal(i int) {
	q := &h.kept
	p := q.open[i]
	q.open = slices.Delete(q.open, i, i+1)
	p.data = append(p.data, "]}"...)
	h.packSeq++
	p.key = fmt.Sprintf("%s/%s/%s-%s-%d_%d-%d.json", historyBodiesPrefix, hourOf(time.Unix(p.t1, 0)), h.node, h.epoch, h.packSeq, p.t1, p.t2)
	// The next pack's buffer is sized for the largest of the recent packs
	// (growing a large buffer by append copies it again and again), and
	// shrinks slowly when they get smaller.
	h.packCap = min(max(4096, h.packCap-h.packCap/8, len(p.data)+len(p.data)/8), historyPackBytesMax+historyPackBytesMax/4)
	q.ready = append(q.ready, *p)
}

// takeBodies seals the open packs and takes what is ready, for a flush.
func (h *history) takeBodies() (ready []storedPack, dropped int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.kept.open) > 0 {
		h.seal(0)
	}
	ready, dropped = h.kept.ready, h.keptDropped
	h.kept.ready, h.kept.bytes, h.keptDropped = nil, 0, 0
	clear(h.kept.seen)
	return ready, dropped
}

// appendBodyJSON appends rec as historyBody's JSON.
func appendBodyJSON(dst []byte, rec *bodyRecord, node string, at time.Time) []byte {
	dst = append(dst, `{"delivery_id":"`...)
	dst = rec.id.appendTo(dst)
	dst = append(dst, `","node":`...)
	dst = appendJSONString(dst, node)
	dst = append(dst, `,"at":"`...)
	dst = at.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","body":"`...)
	dst = base64.StdEncoding.AppendEncode(dst, rec.body)
	dst = append(dst, `","headers":{`...)
	first := true
	for k, v := range rec.hdr {
		if k == hdrSignature || !isReReadyHeader(k) || len(v) == 0 {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendJSONString(dst, k)
		dst = append(dst, ':')
		dst = appendJSONString(dst, v[0])
	}
	dst = append(dst, `},"host":`...)
	dst = appendJSONString(dst, rec.host)
	dst = append(dst, `,"uri":`...)
	dst = appendJSONString(dst, rec.uri)
	dst = append(dst, `,"tls":`...)
	dst = strconv.AppendBool(dst, rec.tls)
	dst = append(dst, `,"server":`...)
	dst = appendJSONString(dst, rec.server)
	dst = append(dst, `,"port":`...)
	dst = strconv.AppendInt(dst, int64(rec.port), 10)
	return append(dst, '}')
}

// appendJSONString appends s as a JSON string, as encoding/json writes it
// (invalid UTF-8 as U+FFFD; <, > and & left as they are).
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				const hex = "0123456789abcdef"
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// ---------------------------------------------------------------------
// Writing

// storedPack is a pack being filled, ready to write, or waiting to be
// written again.
type storedPack struct {
	key    string // set when sealed
	data   []byte
	ids    []deliveryID
	hour   int64 // of the ids' t
	t1, t2 int64 // the span of the ids' t
}

// writeBodies writes the packs of bodies kept since the last flush, after
// the packs of earlier flushes that failed. It stops at the first failed
// write, and does not start when skip (the flush's entries could not be
// written): what is left waits for the next flush, within
// historyBodyBytesMax (past it the oldest packs go). Flusher only.
func (h *history) writeBodies(ctx context.Context, skip bool) {
	ready, dropped := h.takeBodies()
	h.pendingPacks = append(h.pendingPacks, ready...)
	for len(h.pendingPacks) > 0 && !skip {
		p := h.pendingPacks[0]
		if err := h.storage.Store(ctx, p.key, p.data); err != nil {
			h.failed(err)
			break
		}
		h.mu.Lock()
		if len(h.storedBody)+len(p.ids) > 10_000 {
			clear(h.storedBody)
		}
		for _, id := range p.ids {
			h.storedBody[id] = struct{}{}
		}
		if h.reuseBufs && len(h.freeBufs) < 2 && cap(p.data) >= h.packCap {
			h.freeBufs = append(h.freeBufs, p.data[:0])
		}
		h.mu.Unlock()
		h.pendingPacks[0] = storedPack{}
		h.pendingPacks = h.pendingPacks[1:]
		h.recovered()
	}
	bytes := 0
	for _, p := range h.pendingPacks {
		bytes += len(p.data)
	}
	for bytes > historyBodyBytesMax && len(h.pendingPacks) > 0 {
		bytes -= len(h.pendingPacks[0].data)
		dropped += len(h.pendingPacks[0].ids)
		h.pendingPacks = h.pendingPacks[1:]
	}
	if len(h.pendingPacks) == 0 {
		h.pendingPacks = nil
	}
	if dropped > 0 {
		h.logger.Warn("history: dropping kept bodies not yet written to storage", zap.Int("bodies", dropped), zap.Int("bound_bytes", historyBodyBytesMax))
	}
}

// ---------------------------------------------------------------------
// Finding

// packSpan reads the span of ids' t from a pack's name; ok is false for
// any other name (file_system's temporary files among them).
func packSpan(name string) (t1, t2 int64, ok bool) {
	rest, found := strings.CutSuffix(name, ".json")
	if !found {
		return 0, 0, false
	}
	i := strings.LastIndexByte(rest, '_')
	if i < 0 {
		return 0, 0, false
	}
	a, b, found := strings.Cut(rest[i+1:], "-")
	if !found {
		return 0, 0, false
	}
	t1, err1 := strconv.ParseInt(a, 10, 64)
	t2, err2 := strconv.ParseInt(b, 10, 64)
	return t1, t2, err1 == nil && err2 == nil && t1 <= t2
}

// findBodies reads the kept bodies of ids from st: for each hour of their
// t, one listing of its folder and the packs whose span holds one of them.
// An id whose body is not kept is absent from the answer. A listing or a
// read that fails is an error, never a body missing.
func findBodies(ctx context.Context, st certmagic.Storage, ids []deliveryID) (map[deliveryID]*historyBody, error) {
	byHour := map[int64][]int64{} // hour -> the wanted ids' t, sorted
	want := make(map[string]deliveryID, len(ids))
	for _, id := range ids {
		want[id.String()] = id
		byHour[id.t/3600] = append(byHour[id.t/3600], id.t)
	}
	found := make(map[deliveryID]*historyBody, len(ids))
	take := func(b *historyBody) {
		id, ok := want[b.DeliveryID]
		if !ok {
			return
		}
		if old, ok := found[id]; !ok || b.At.Before(old.At) {
			found[id] = b
		}
	}
	for hour, ts := range byHour {
		slices.Sort(ts)
		folder := historyBodiesPrefix + "/" + hourOf(time.Unix(hour*3600, 0))
		keys, err := listKeys(ctx, st, folder)
		if err != nil {
			return nil, err
		}
		for _, key := range keys {
			name := baseName(key)
			t1, t2, isPack := packSpan(name)
			_, wanted := want[name]
			if isPack {
				i, _ := slices.BinarySearch(ts, t1)
				isPack = i < len(ts) && ts[i] <= t2
			}
			if !isPack && !wanted { // wanted: a body stored alone, as before packs
				continue
			}
			data, err := loadListed(ctx, st, key)
			if err != nil {
				return nil, err
			}
			if data == nil {
				continue
			}
			if !isPack {
				var b historyBody
				if json.Unmarshal(data, &b) == nil {
					take(&b)
				}
				continue
			}
			var p bodyPack
			if err := json.Unmarshal(data, &p); err != nil {
				return nil, fmt.Errorf("reading %s: %w", key, err)
			}
			for _, b := range p.Bodies {
				if b != nil {
					take(b)
				}
			}
		}
	}
	return found, nil
}

// loadListed loads a key a listing named; nil when it is gone. A key
// listed but not there is tried once more a little later (Redis's storage
// lists from an index written before the value); still missing (swept
// meanwhile, or not written yet), it is counted in ctx's unreadCount, so
// that the answer can say it is partial.
func loadListed(ctx context.Context, st certmagic.Storage, key string) ([]byte, error) {
	var data []byte
	for try := 0; ; try++ {
		err := retryStorage(ctx, func() error {
			var err error
			data, err = st.Load(ctx, key)
			if errors.Is(err, fs.ErrNotExist) {
				data, err = nil, nil
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", key, err)
		}
		if data != nil {
			return data, nil
		}
		if try == 1 {
			if n, ok := ctx.Value(unreadKey{}).(*atomic.Int64); ok {
				n.Add(1)
			}
			return nil, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(listedRetryWait):
		}
	}
}

// listedRetryWait is how long loadListed waits before loading a listed key
// that was not there again.
const listedRetryWait = 50 * time.Millisecond

// unreadKey is the context key of the count of listed objects that did not
// load (*atomic.Int64), set by the queries that report a partial answer.
type unreadKey struct{}

// withUnreadCount returns ctx counting listed objects that do not load.
func withUnreadCount(ctx context.Context) (context.Context, *atomic.Int64) {
	n := new(atomic.Int64)
	return context.WithValue(ctx, unreadKey{}, n), n
}

// loadBody reads the kept body of delivery id; fs.ErrNotExist when none.
func (h *history) loadBody(ctx context.Context, id deliveryID) (*historyBody, error) {
	found, err := findBodies(ctx, h.storage, []deliveryID{id})
	if err != nil {
		return nil, err
	}
	b, ok := found[id]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return b, nil
}
