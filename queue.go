package rereadyverify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// This file is the store-and-forward queue's storage: one record per
// queued delivery in Caddy's configured storage, so a queued delivery
// survives a crash and every gateway sharing the storage sees it, and one
// record per device return listing its pending deliveries in arrival order.
//
//	reready_verify/queue/items/<delivery id>   a queueItem, JSON
//	reready_verify/queue/returns/<digest>      a returnRecord, JSON
//
// A return's record exists while it has pending deliveries; a live delivery
// for that return is then queued behind them, and only the first of them is
// redelivered, so the app sees a return's states in order. Changes to a
// return's record are made under the storage lock of that return; changes
// to an item under the item's lock (item lock first when both are held).
// The return's line is in queue_line.go.

// Queue defaults and bounds.
const (
	DefaultQueueMaxAge   = 72 * time.Hour
	DefaultQueueMaxItems = 10_000

	queuePrefix        = "reready_verify/queue"
	queueItemsPrefix   = queuePrefix + "/items"
	queueReturnsPrefix = queuePrefix + "/returns"

	// queueLockWait bounds a wait for a storage lock on the live path and
	// in the admin API; it exceeds file_system's stale-lock age (10s).
	queueLockWait = 15 * time.Second
)

// Item statuses.
const (
	ItemPending = "pending" // waiting for its next attempt
	ItemDead    = "dead"    // given up on; retried only by hand
)

// QueueConfig turns store-and-forward on for a handler.
type QueueConfig struct {
	// How long to keep redelivering a delivery before it is given up on
	// (dead: kept and listed, retried only by hand). Default: 72h.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// Most deliveries, pending and dead, kept in the storage; beyond it a
	// failed delivery is answered 503 with Retry-After. Default: 10000.
	MaxItems int `json:"max_items,omitempty"`
}

// queueItem is a queued delivery as stored. It holds what it takes to send
// the request again through the same route: the body, the original
// headers (without X-ReReady-* ones other than the signature), host, URI
// as the client sent it (without the token) and remote address.
type queueItem struct {
	ID             string     `json:"id"`
	Status         string     `json:"status"`
	DeviceReturnID string     `json:"device_return_id"`
	State          string     `json:"state"`
	Test           bool       `json:"test"`
	ReceivedAt     time.Time  `json:"received_at"`
	Attempts       int        `json:"attempts"`
	LastAttemptAt  *time.Time `json:"last_attempt_at,omitempty"`
	NextAttemptAt  *time.Time `json:"next_attempt_at"`
	LastStatus     int        `json:"last_status"`             // what the gateway answered for the last attempt; 0 before one
	LastUpstream   int        `json:"last_upstream,omitempty"` // what the app answered then; 0 when it did not
	LastError      string     `json:"last_error"`
	MaxAge         int64      `json:"max_age"` // nanoseconds

	Server     string      `json:"server"`
	Port       int         `json:"port,omitempty"` // the local port it arrived on
	TLS        bool        `json:"tls,omitempty"`
	Host       string      `json:"host"`
	URI        string      `json:"uri"`
	RemoteAddr string      `json:"remote_addr"`
	Header     http.Header `json:"header"`
	Verified   string      `json:"verified"`
	Key        int         `json:"key"`
	Timestamp  string      `json:"timestamp,omitempty"`
	Body       []byte      `json:"body"`

	// Set aside: an item that could not be read, kept with its raw bytes.
	Corrupt bool   `json:"corrupt,omitempty"`
	Raw     []byte `json:"raw,omitempty"`

	// Put back on the queue by an operator's replay (replay_range.go):
	// its id, sent as X-ReReady-Replay.
	ReplayID string `json:"replay_id,omitempty"`
}

// deadline is when the item stops being retried by itself.
func (it *queueItem) deadline() time.Time {
	return it.ReceivedAt.Add(time.Duration(it.MaxAge))
}

// path is the request path the item is delivered to, for route kicks.
func (it *queueItem) path() string {
	p, _, _ := strings.Cut(it.URI, "?")
	return p
}

// QueueItem is a queued delivery as the admin API, the page and the CLI
// show it: never its body, headers or signature.
type QueueItem struct {
	ID              string  `json:"id"`
	Status          string  `json:"status"`
	DeviceReturnID  string  `json:"device_return_id"`
	State           string  `json:"state"`
	Test            bool    `json:"test"`
	ReceivedAt      string  `json:"received_at"`
	Attempts        int     `json:"attempts"`
	NextAttemptAt   *string `json:"next_attempt_at"` // null while held, and once dead
	HeldBehind      *string `json:"held_behind"`     // the delivery of its return that goes first; null when it goes next
	LastStatus      *int    `json:"last_status"`     // what the gateway answered for the last attempt; null before one
	LastError       string  `json:"last_error"`
	Path            string  `json:"path"`              // the request path it is delivered to (its route)
	AppFailingSince *string `json:"app_failing_since"` // while its route's app fails (as this gateway saw), since when
	ReplayID        *string `json:"replay_id"`         // the operator's replay that queued it again; null otherwise
}

func (it *queueItem) view() QueueItem {
	v := QueueItem{
		ID:             it.ID,
		Status:         it.Status,
		DeviceReturnID: it.DeviceReturnID,
		State:          it.State,
		Test:           it.Test,
		Attempts:       it.Attempts,
		LastError:      it.LastError,
		Path:           it.path(),
	}
	if it.ReplayID != "" {
		v.ReplayID = &it.ReplayID
	}
	if it.Attempts > 0 && it.LastStatus != 0 {
		st := it.LastStatus
		v.LastStatus = &st
	}
	if !it.ReceivedAt.IsZero() {
		v.ReceivedAt = it.ReceivedAt.UTC().Format(time.RFC3339)
	}
	if it.Status == ItemPending && it.NextAttemptAt != nil {
		s := it.NextAttemptAt.UTC().Format(time.RFC3339)
		v.NextAttemptAt = &s
	}
	return v
}

// Queue errors.
var (
	errQueueFull    = errors.New("queue is full (max_items)")
	errItemNotFound = errors.New("no such queued delivery")
	errItemCorrupt  = errors.New("unreadable queued delivery")
)

// queue is the storage side of store-and-forward. It is safe for
// concurrent use; every gateway sharing the storage may use it at once.
type queue struct {
	storage  certmagic.Storage
	logger   *zap.Logger
	lockWait time.Duration
	returns  *dirProbe // file_system: the returns' directory, for held
	pauseDir *dirProbe // file_system: the pause record's directory, for loadPause

	pauseParsed atomic.Pointer[parsedPause]          // file_system: the pause record, as last parsed (pause.go)
	pauseLive   atomic.Pointer[liveRead[PauseState]] // the live path's read of the pause state (livePause)
	linesRead   atomic.Pointer[liveRead[bool]]       // the live path's read "no return has a line" (noLines)
}

// liveRead is a value the live path read from the storage, and until when
// it may act on it: the read's start plus pauseFresh or lineFresh, which
// the writes that change the value wait out before they answer.
type liveRead[T any] struct {
	v     T
	until time.Time
}

// readLive returns the value kept in p if its read began less than fresh
// ago; otherwise it calls read and keeps what it returns, unless it failed.
func readLive[T any](p *atomic.Pointer[liveRead[T]], fresh time.Duration, read func() (T, error)) (T, error) {
	now := time.Now()
	if c := p.Load(); c != nil && now.Before(c.until) {
		return c.v, nil
	}
	v, err := read()
	if err != nil {
		return v, err
	}
	p.Store(&liveRead[T]{v: v, until: now.Add(fresh)})
	return v, nil
}

func newQueue(st certmagic.Storage, logger *zap.Logger) *queue {
	if logger == nil {
		logger = zap.NewNop()
	}
	q := &queue{storage: st, logger: logger, lockWait: queueLockWait}
	if fsys, ok := st.(*certmagic.FileStorage); ok {
		q.returns = newDirProbe(fsys, queueReturnsPrefix)
		q.pauseDir = newDirProbe(fsys, pausePrefix)
	}
	return q
}

// validItemName reports whether s can name an item: a delivery id in its
// text form, which is what the handler stores items under and what the
// admin API accepts (no path separator, no dot-only name). Anything else
// under the items prefix is not an item: file_system writes a key through
// a temporary file in the same directory (all digits, renamed when
// complete), and reading one of those as an item, or setting it aside,
// would race with that rename.
func validItemName(s string) bool {
	d, ok := parseDeliveryID(s)
	return ok && d.String() == s
}

func itemKey(id string) string { return queueItemsPrefix + "/" + id }

func (q *queue) locked(ctx context.Context, key string, f func(context.Context) error) error {
	return withStorageLock(ctx, q.storage, q.lockWait, key, q.logger, f)
}

// loadItem reads an item. A record that does not parse is errItemCorrupt.
func (q *queue) loadItem(ctx context.Context, id string) (*queueItem, error) {
	data, err := q.storage.Load(ctx, itemKey(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errItemNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("loading queued delivery %s: %w", id, err)
	}
	return decodeItem(id, data)
}

func decodeItem(id string, data []byte) (*queueItem, error) {
	it := new(queueItem)
	if err := json.Unmarshal(data, it); err != nil {
		return nil, fmt.Errorf("%w %s: %v", errItemCorrupt, id, err)
	}
	if it.ID != id || (it.Status != ItemPending && it.Status != ItemDead) {
		return nil, fmt.Errorf("%w %s: id %q, status %q", errItemCorrupt, id, clip(it.ID), clip(it.Status))
	}
	if !it.Corrupt && (it.ReceivedAt.IsZero() || len(it.Body) == 0) {
		return nil, fmt.Errorf("%w %s: no received_at or body", errItemCorrupt, id)
	}
	return it, nil
}

func (q *queue) storeItem(ctx context.Context, it *queueItem) error {
	data, err := json.Marshal(it)
	if err != nil {
		return err
	}
	if err := q.storage.Store(ctx, itemKey(it.ID), data); err != nil {
		return fmt.Errorf("storing queued delivery %s: %w", it.ID, err)
	}
	return nil
}

func (q *queue) deleteItem(ctx context.Context, id string) error {
	if err := q.storage.Delete(ctx, itemKey(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting queued delivery %s: %w", id, err)
	}
	return nil
}

// ids lists the names of the stored items. A listing that failed is an
// error, never a shorter list.
func (q *queue) ids(ctx context.Context) ([]string, error) {
	keys, err := listKeys(ctx, q.storage, queueItemsPrefix)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(keys))
	for _, k := range keys {
		if name := baseName(k); validItemName(name) {
			ids = append(ids, name)
		}
	}
	return ids, nil
}

// enqueueMu makes max_items exact on one gateway: the count of stored
// items and the store of a new one are one step for every enqueue of this
// process. Gateways sharing a storage count independently, so together
// they may store up to one item more than max_items each.
var enqueueMu sync.Mutex

// enqueued says what enqueue did.
type enqueued int

const (
	enqueuedNew     enqueued = iota // stored, at the end of its return's line
	enqueuedExisted                 // an item with its id was pending: left as it is
	enqueuedRevived                 // an item with its id was dead: pending again
)

// enqueue stores it as pending at the end of its return's line. A resend
// of a pending delivery (an item with its id is stored) leaves that item
// as it is; a resend of a dead one makes it pending again, back in its
// return's line, updated by revive (its attempt record, when the live
// attempt failed). At maxItems stored items it fails with errQueueFull.
func (q *queue) enqueue(ctx context.Context, it *queueItem, maxItems int, now time.Time, revive func(*queueItem)) (enqueued, error) {
	what := enqueuedNew
	err := q.locked(ctx, returnKey(it.DeviceReturnID), func(ctx context.Context) error {
		old, err := q.loadItem(ctx, it.ID)
		switch {
		case err == nil && old.Status == ItemDead && !old.Corrupt:
			what = enqueuedRevived // after this lock: an item's lock comes first
			return nil
		case err == nil, errors.Is(err, errItemCorrupt):
			what = enqueuedExisted
			return nil
		case !errors.Is(err, errItemNotFound):
			return err
		}
		rec, err := q.loadReturn(ctx, it.DeviceReturnID)
		if err != nil {
			return err
		}
		if err := q.storeNew(ctx, it, maxItems); err != nil {
			return err
		}
		rec.IDs = append(rec.IDs, it.ID)
		if err := q.storeReturn(ctx, rec); err != nil {
			if derr := q.deleteItem(context.WithoutCancel(ctx), it.ID); derr != nil {
				q.logger.Error("queue: removing a delivery whose return record failed", zap.Error(derr))
			}
			return err
		}
		return nil
	})
	if err == nil && what == enqueuedRevived {
		_, err = q.revive(ctx, it.ID, now, revive)
		if errors.Is(err, errNotDead) {
			what, err = enqueuedExisted, nil // revived meanwhile, by hand or another resend
		}
	}
	return what, err
}

// storeNew stores a new item unless maxItems are stored.
func (q *queue) storeNew(ctx context.Context, it *queueItem, maxItems int) error {
	enqueueMu.Lock()
	defer enqueueMu.Unlock()
	ids, err := q.ids(ctx)
	if err != nil {
		return err
	}
	if len(ids) >= maxItems {
		return errQueueFull
	}
	return q.storeItem(ctx, it)
}

// withItem runs f on the item id under its lock, re-read after taking it.
func (q *queue) withItem(ctx context.Context, id string, f func(ctx context.Context, it *queueItem) error) error {
	return q.locked(ctx, itemKey(id), func(ctx context.Context) error {
		it, err := q.loadItem(ctx, id)
		if err != nil {
			return err
		}
		return f(ctx, it)
	})
}

// all loads every stored item. Items that cannot be read are returned as
// dead ones holding the error, so views list them and they can be dropped.
func (q *queue) all(ctx context.Context) ([]*queueItem, error) {
	ids, err := q.ids(ctx)
	if err != nil {
		return nil, err
	}
	items := make([]*queueItem, 0, len(ids))
	for _, id := range ids {
		it, err := q.loadItem(ctx, id)
		switch {
		case errors.Is(err, errItemNotFound):
			continue // delivered or dropped meanwhile
		case err != nil:
			it = &queueItem{ID: id, Status: ItemDead, Corrupt: true, LastError: err.Error()}
		}
		items = append(items, it)
	}
	return items, nil
}

// view lists every item for the admin API, oldest first.
func (q *queue) view(ctx context.Context) ([]QueueItem, error) {
	items, err := q.all(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(items, func(a, b *queueItem) int { return a.ReceivedAt.Compare(b.ReceivedAt) })
	pending := map[string]int{} // return id -> its pending items listed
	for _, it := range items {
		if it.Status == ItemPending {
			pending[it.DeviceReturnID]++
		}
	}
	heads := map[string]string{} // return id -> the delivery that goes first
	for _, it := range items {
		if it.Status != ItemPending || pending[it.DeviceReturnID] < 2 {
			continue
		}
		if _, ok := heads[it.DeviceReturnID]; !ok {
			heads[it.DeviceReturnID] = q.head(ctx, it.DeviceReturnID, it.ID)
		}
	}
	out := make([]QueueItem, 0, len(items))
	for _, it := range items {
		v := it.view()
		if head, ok := heads[it.DeviceReturnID]; ok && it.Status == ItemPending && head != it.ID {
			v.HeldBehind, v.NextAttemptAt = &head, nil
		}
		out = append(out, v)
	}
	return out, nil
}

// itemVersion is what an attempt or an operator changes in an item.
type itemVersion struct {
	status        string
	attempts      int
	lastAttempt   time.Time
	nextAttemptAt time.Time
}

func versionOf(it *queueItem) itemVersion {
	v := itemVersion{status: it.Status, attempts: it.Attempts}
	if it.LastAttemptAt != nil {
		v.lastAttempt = *it.LastAttemptAt
	}
	if it.NextAttemptAt != nil {
		v.nextAttemptAt = *it.NextAttemptAt
	}
	return v
}

// storeIfUnchanged stores it unless the stored item is gone, or changed
// since version was: another gateway delivered, dropped or recorded it
// while this one held a lock that it lost. Storage offers no
// compare-and-set, so this narrows the window to a read and a write; the
// caller holds the item's lock. stored reports whether it stored.
func (q *queue) storeIfUnchanged(ctx context.Context, it *queueItem, was itemVersion) (stored bool, err error) {
	cur, err := q.loadItem(ctx, it.ID)
	switch {
	case errors.Is(err, errItemNotFound):
		return false, nil
	case err != nil:
		return false, err
	case versionOf(cur) != was:
		return false, nil
	}
	return true, q.storeItem(ctx, it)
}

// errNotDead: revive found the item pending.
var errNotDead = errors.New("not dead")

// retry makes id pending and due now (a dead one rejoins its return's
// line). A set-aside (corrupt) item cannot be retried.
func (q *queue) retry(ctx context.Context, id string, now time.Time) (*queueItem, error) {
	var out *queueItem
	err := q.withItem(ctx, id, func(ctx context.Context, it *queueItem) error {
		if it.Corrupt {
			return fmt.Errorf("%w %s: it was set aside and can only be dropped", errItemCorrupt, id)
		}
		if it.Status == ItemDead {
			var err error
			out, err = q.reviveLocked(ctx, it, func(it *queueItem) { it.NextAttemptAt = &now }, now)
			return err
		}
		it.NextAttemptAt = &now
		out = it
		return q.storeItem(ctx, it)
	})
	return out, err
}

// revive makes the dead item id pending again, changed by update, with a
// fresh max_age from now (so it is not given up on again at its first
// failure), and puts it back in its return's line. errNotDead: it is not
// dead.
func (q *queue) revive(ctx context.Context, id string, now time.Time, update func(*queueItem)) (*queueItem, error) {
	var out *queueItem
	err := q.withItem(ctx, id, func(ctx context.Context, it *queueItem) error {
		if it.Status != ItemDead || it.Corrupt {
			return errNotDead
		}
		var err error
		out, err = q.reviveLocked(ctx, it, update, now)
		return err
	})
	return out, err
}

func (q *queue) reviveLocked(ctx context.Context, it *queueItem, update func(*queueItem), now time.Time) (*queueItem, error) {
	it.Status = ItemPending
	it.MaxAge = int64(now.Sub(it.ReceivedAt) + time.Duration(it.MaxAge))
	if update != nil {
		update(it)
	}
	if err := q.storeItem(ctx, it); err != nil {
		return nil, err
	}
	return it, q.joinLine(ctx, it)
}

// resolve removes the dead item id: a resend of it was delivered live.
// It does nothing if the item is not dead (any more).
func (q *queue) resolve(ctx context.Context, id string) (bool, error) {
	resolved := false
	err := q.withItem(ctx, id, func(ctx context.Context, it *queueItem) error {
		if it.Status != ItemDead || it.Corrupt {
			return nil
		}
		resolved = true
		return q.deleteItem(ctx, id)
	})
	if errors.Is(err, errItemNotFound) {
		err = nil
	}
	return resolved, err
}

// isDead reports whether id names a dead (not set-aside) item.
func (q *queue) isDead(ctx context.Context, id string) (bool, error) {
	var it *queueItem
	err := retryStorage(ctx, func() error {
		var err error
		it, err = q.loadItem(ctx, id)
		if errors.Is(err, errItemNotFound) || errors.Is(err, errItemCorrupt) {
			return nil
		}
		return err
	})
	if err != nil || it == nil {
		return false, err
	}
	return it.Status == ItemDead && !it.Corrupt, nil
}

// drop deletes id and takes it out of its return's line.
func (q *queue) drop(ctx context.Context, id string) (*queueItem, error) {
	var out *queueItem
	err := q.locked(ctx, itemKey(id), func(ctx context.Context) error {
		it, err := q.loadItem(ctx, id)
		switch {
		case errors.Is(err, errItemCorrupt):
			it = &queueItem{ID: id, Status: ItemDead, Corrupt: true}
		case err != nil:
			return err
		}
		if err := q.deleteItem(ctx, id); err != nil {
			return err
		}
		out = it
		if it.DeviceReturnID != "" {
			return q.leaveLine(ctx, it.DeviceReturnID, id)
		}
		return nil
	})
	return out, err
}

// setAside rewrites an unreadable item as a dead, corrupt one holding its
// raw bytes and the error, so it is listed, never attempted, and can be
// dropped. It returns the rewritten item.
func (q *queue) setAside(ctx context.Context, id string, cause error) (*queueItem, error) {
	var out *queueItem
	err := q.locked(ctx, itemKey(id), func(ctx context.Context) error {
		raw, err := q.storage.Load(ctx, itemKey(id))
		if err != nil {
			return err
		}
		if _, err := decodeItem(id, raw); err == nil {
			return nil // rewritten meanwhile
		}
		out = &queueItem{ID: id, Status: ItemDead, Corrupt: true, Raw: raw, LastError: cause.Error()}
		return q.storeItem(ctx, out)
	})
	return out, err
}
