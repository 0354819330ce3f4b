package rereadyverify

import (
	"cmp"
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

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
)

// This file is the queries over the journal's ring and the history in
// storage, read together without duplicates: GET /deliveries with since,
// until or cursor, and GET /deliveries/{id}.
//
// An entry is named across the fleet by its node, its process's journal
// epoch and its sequence number there; entries are ordered newest first by
// time, then by that name. A cursor is the last entry of a page, encoded:
// the next page is what comes after it in that order.

// entryKey names and orders an entry.
type entryKey struct {
	At    time.Time
	Node  string
	Epoch string
	Seq   uint64
}

// compare orders keys oldest first.
func (k entryKey) compare(o entryKey) int {
	return cmp.Or(k.At.Compare(o.At), strings.Compare(k.Node, o.Node), strings.Compare(k.Epoch, o.Epoch), cmp.Compare(k.Seq, o.Seq))
}

func (k entryKey) id() string { return fmt.Sprintf("%s/%s/%d", k.Node, k.Epoch, k.Seq) }

// cursorJSON is a cursor's content.
type cursorJSON struct {
	T int64  `json:"t"`
	N string `json:"n"`
	E string `json:"e"`
	S uint64 `json:"s"`
}

func (k entryKey) cursor() string {
	data, _ := json.Marshal(cursorJSON{T: k.At.UnixNano(), N: k.Node, E: k.Epoch, S: k.Seq})
	return base64.RawURLEncoding.EncodeToString(data)
}

func parseCursor(s string) (entryKey, bool) {
	data, err := base64.RawURLEncoding.DecodeString(s)
	var c cursorJSON
	if err != nil || json.Unmarshal(data, &c) != nil || c.S == 0 {
		return entryKey{}, false
	}
	return entryKey{At: time.Unix(0, c.T), Node: c.N, Epoch: c.E, Seq: c.S}, true
}

// keyed is an entry with its key.
type keyed struct {
	key entryKey
	d   Delivery
}

// rangeQuery is a query of GET /deliveries with since, until or cursor.
type rangeQuery struct {
	f      DeliveryFilter
	since  time.Time // zero: no bound
	until  time.Time // zero: no bound
	cursor *entryKey // only entries after it (older)
}

// in reports whether an entry at t with key k is in q's range.
func (q *rangeQuery) in(k entryKey) bool {
	return (q.since.IsZero() || !k.At.Before(q.since)) &&
		(q.until.IsZero() || !k.At.After(q.until)) &&
		(q.cursor == nil || k.compare(*q.cursor) < 0)
}

// matches applies the filter's fields to an entry read back.
func (f *DeliveryFilter) matches(d *Delivery) bool {
	return (f.ReturnID == "" || d.DeviceReturnID == f.ReturnID) &&
		(f.State == "" || d.State == f.State) &&
		(f.Outcome == "" || d.Outcome == f.Outcome) &&
		(f.Test == nil || d.Test == *f.Test)
}

// ringEntries returns up to limit entries of the journal's ring that
// match, newest first, each with this process's node.
func (j *journal) ringEntries(node string, limit int, match func(k entryKey, e *journalEntry) bool) []keyed {
	var out []keyed
	j.mu.Lock()
	defer j.mu.Unlock()
	for i := j.n - 1; i >= 0 && len(out) < limit; i-- {
		e := &j.ring[(j.start+i)%len(j.ring)]
		k := entryKey{At: e.at, Node: node, Epoch: j.epoch, Seq: e.seq}
		if !match(k, e) {
			continue
		}
		d := e.view()
		d.Node = node
		out = append(out, keyed{k, d})
	}
	return out
}

// readHour reads the batches of an hour folder. A batch that is listed but
// does not load (swept meanwhile; on a networked store, not written yet)
// is left out and counted (loadListed); any other failure is an error.
func readHour(ctx context.Context, st certmagic.Storage, hour string) ([]keyed, error) {
	var out []keyed
	err := readListed(ctx, st, historyPrefix+"/"+hour, func(data []byte) {
		var b historyBatch
		if json.Unmarshal(data, &b) != nil {
			return
		}
		for _, d := range b.Entries {
			at, err := time.Parse(time.RFC3339Nano, d.Time)
			if err != nil {
				continue
			}
			d.Node = b.Node
			out = append(out, keyed{entryKey{At: at, Node: b.Node, Epoch: b.Epoch, Seq: d.Seq}, d})
		}
	})
	return out, err
}

// readListed lists prefix and calls f with each JSON object in it (not
// file_system's temporary files) that loads (loadListed).
func readListed(ctx context.Context, st certmagic.Storage, prefix string, f func(data []byte)) error {
	keys, err := listKeys(ctx, st, prefix)
	if err != nil {
		return err
	}
	for _, key := range keys {
		if !strings.HasSuffix(key, ".json") {
			continue // file_system's temporary files
		}
		data, err := loadListed(ctx, st, key)
		if err != nil {
			return err
		}
		if data != nil {
			f(data)
		}
	}
	return nil
}

// lateHours reads the late index of id's hour: the hour folders holding
// entries of id recorded over historyLateAfter after its t.
func lateHours(ctx context.Context, st certmagic.Storage, id deliveryID) ([]string, error) {
	want := id.String()
	var hours []string
	err := readListed(ctx, st, historyLatePrefix+"/"+hourOf(time.Unix(id.t, 0)), func(data []byte) {
		var refs []lateRef
		if json.Unmarshal(data, &refs) != nil {
			return
		}
		for _, r := range refs {
			if r.ID == want && hourName.MatchString(r.Hour) && !slices.Contains(hours, r.Hour) {
				hours = append(hours, r.Hour)
			}
		}
	})
	return hours, err
}

// hoursBetween lists the history's hour folders that may hold entries
// from `from` to `to` (zero: no bound), newest first.
func hoursBetween(ctx context.Context, st certmagic.Storage, from, to time.Time) ([]historyHour, error) {
	hours, err := listHours(ctx, st, historyPrefix)
	if err != nil {
		return nil, err
	}
	hours = slices.DeleteFunc(hours, func(h historyHour) bool {
		return !from.IsZero() && !h.start.Add(time.Hour).After(from) || !to.IsZero() && h.start.After(to)
	})
	slices.SortFunc(hours, func(a, b historyHour) int { return b.start.Compare(a.start) })
	return hours, nil
}

// queryRange answers a range query from the journal j of this process
// and, when a runs with history, from storage: at most f.Limit entries,
// newest first, and the key of the last one when more follow.
func queryRange(ctx context.Context, a *App, j *journal, q rangeQuery) ([]Delivery, *entryKey, error) {
	limit := q.f.Limit
	if limit <= 0 {
		limit = DefaultDeliveryLimit
	}
	limit = min(limit, maxDeliveryLimit)
	node := thisNode()
	found := map[string]keyed{}
	for _, k := range j.ringEntries(node, limit+1, func(k entryKey, e *journalEntry) bool {
		return q.in(k) && (q.f.ReturnID == "" || e.returnID.peek() == q.f.ReturnID) &&
			(q.f.State == "" || e.state == q.f.State) && (q.f.Outcome == "" || e.outcome == q.f.Outcome) &&
			(q.f.Test == nil || e.test == *q.f.Test)
	}) {
		found[k.key.id()] = k
	}
	if a != nil && a.history != nil {
		to := q.until
		if q.cursor != nil && (to.IsZero() || q.cursor.At.Before(to)) {
			to = q.cursor.At
		}
		hours, err := hoursBetween(ctx, a.history.storage, q.since, to)
		if err != nil {
			return nil, nil, err
		}
		n := 0
		for _, h := range hours {
			entries, err := readHour(ctx, a.history.storage, baseName(h.key))
			if err != nil {
				return nil, nil, err
			}
			for _, k := range entries {
				if q.in(k.key) && q.f.matches(&k.d) {
					n++
					if _, dup := found[k.key.id()]; !dup {
						found[k.key.id()] = k
					}
				}
			}
			// Older hours hold only older entries.
			if n > limit {
				break
			}
		}
	}
	all := make([]keyed, 0, len(found))
	for _, k := range found {
		all = append(all, k)
	}
	slices.SortFunc(all, func(x, y keyed) int { return y.key.compare(x.key) })
	var next *entryKey
	if len(all) > limit {
		all = all[:limit]
		next = &all[limit-1].key
	}
	out := make([]Delivery, len(all))
	for i, k := range all {
		out[i] = k.d
	}
	return out, next, nil
}

// DeliveryRecord is everything known of one delivery: GET
// /deliveries/{id}.
type DeliveryRecord struct {
	DeliveryID string     `json:"delivery_id"`
	Entries    []Delivery `json:"entries"` // oldest first
	// With history bodies on: the exact body (base64) and the trusted
	// headers it was sent with, and the request's route.
	Body    []byte            `json:"body,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	Host    string            `json:"host,omitempty"`
	URI     string            `json:"uri,omitempty"` // without the token
}

// deliveryRecord gathers a delivery's entries from the ring and, when a
// runs with history, from storage (the hours from an hour before its t to
// historyDeliveryWindow after, and the hours the late index names for it),
// with its body when kept. ok is false when nothing is known of it.
func deliveryRecord(ctx context.Context, a *App, j *journal, id deliveryID) (rec DeliveryRecord, ok bool, err error) {
	rec = DeliveryRecord{DeliveryID: id.String(), Entries: []Delivery{}}
	found := map[string]keyed{}
	for _, k := range j.ringEntries(thisNode(), maxDeliveryLimit, func(_ entryKey, e *journalEntry) bool { return e.id == id }) {
		found[k.key.id()] = k
	}
	if a != nil && a.history != nil {
		st := a.history.storage
		t := time.Unix(id.t, 0)
		hours, err := hoursBetween(ctx, st, t.Add(-time.Hour), t.Add(historyDeliveryWindow))
		if err != nil {
			return rec, false, err
		}
		names := make([]string, 0, len(hours))
		for _, h := range hours {
			names = append(names, baseName(h.key))
		}
		late, err := lateHours(ctx, st, id)
		if err != nil {
			return rec, false, err
		}
		for _, hour := range late {
			if !slices.Contains(names, hour) {
				names = append(names, hour)
			}
		}
		for _, hour := range names {
			entries, err := readHour(ctx, st, hour)
			if err != nil {
				return rec, false, err
			}
			for _, k := range entries {
				if _, dup := found[k.key.id()]; !dup && k.d.DeliveryID == rec.DeliveryID {
					found[k.key.id()] = k
				}
			}
		}
		b, err := a.history.loadBody(ctx, id)
		switch {
		case err == nil:
			rec.Body, rec.Headers, rec.Host, rec.URI = b.Body, b.Headers, b.Host, b.URI
			if rec.Body == nil {
				rec.Body = []byte{}
			}
		case !errors.Is(err, fs.ErrNotExist):
			return rec, false, fmt.Errorf("reading the body: %w", err)
		}
	}
	all := make([]keyed, 0, len(found))
	for _, k := range found {
		all = append(all, k)
	}
	slices.SortFunc(all, func(x, y keyed) int { return x.key.compare(y.key) })
	for _, k := range all {
		rec.Entries = append(rec.Entries, k.d)
	}
	return rec, len(rec.Entries) > 0 || rec.Body != nil, nil
}

// ---------------------------------------------------------------------
// The views' handlers

// rangeOf reads since, until and cursor; ok is false when none is given
// (the journal's answer as before).
func rangeOf(r *http.Request, f DeliveryFilter, now time.Time) (q rangeQuery, ok bool, oerr *opsError) {
	v := r.URL.Query()
	q.f = f
	for _, p := range []struct {
		name string
		t    *time.Time
	}{{"since", &q.since}, {"until", &q.until}} {
		s := v.Get(p.name)
		if s == "" {
			continue
		}
		ok = true
		t, err := parseWhen(s, now)
		if err != nil {
			return q, ok, opsErrorf(http.StatusBadRequest, "invalid %s %q: want an RFC 3339 time (2026-01-02T15:04:05Z) or a duration back from now (2h, 30m, 7d)", p.name, clip(s))
		}
		*p.t = t
	}
	if s := v.Get("cursor"); s != "" {
		ok = true
		k, valid := parseCursor(s)
		if !valid {
			return q, ok, opsErrorf(http.StatusBadRequest, "invalid cursor %q: use the %s of the previous answer as it is", clip(s), nextCursorHeader)
		}
		q.cursor = &k
	}
	if ok && f.After != 0 {
		return q, ok, opsErrorf(http.StatusBadRequest, "after cannot be combined with since, until or cursor")
	}
	return q, ok, nil
}

// parseWhen reads an RFC 3339 time or a duration back from now.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := caddy.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("neither a time nor a duration")
	}
	return now.Add(-d), nil
}

// serveDeliveryRange answers GET /deliveries with since, until or cursor:
// a JSON array as without them, and the next page's cursor in
// nextCursorHeader.
func serveDeliveryRange(w http.ResponseWriter, r *http.Request, q rangeQuery) *opsError {
	ctx, unread := withUnreadCount(r.Context())
	ds, next, err := queryRange(ctx, liveApp.Load(), processJournal, q)
	if err != nil {
		return opsErrorf(http.StatusServiceUnavailable, "reading the history: %v", err)
	}
	if next != nil {
		w.Header().Set(nextCursorHeader, next.cursor())
	}
	setPartial(w, unread)
	return writeJSON(w, ds)
}

// serveDelivery answers GET /deliveries/{id}.
func serveDelivery(w http.ResponseWriter, r *http.Request) *opsError {
	s := r.PathValue("id")
	id, ok := parseDeliveryID(s)
	if !ok {
		return opsErrorf(http.StatusNotFound, "no delivery %q", clip(s))
	}
	ctx, unread := withUnreadCount(r.Context())
	rec, ok, err := deliveryRecord(ctx, liveApp.Load(), processJournal, id)
	if err != nil {
		return opsErrorf(http.StatusServiceUnavailable, "reading the history: %v", err)
	}
	setPartial(w, unread)
	if !ok {
		return opsErrorf(http.StatusNotFound, "no delivery %q in the journal or the history", s)
	}
	return writeJSON(w, rec)
}

// setPartial sets partialHeader when listed objects did not load.
func setPartial(w http.ResponseWriter, unread *atomic.Int64) {
	if n := unread.Load(); n > 0 {
		w.Header().Set(partialHeader, strconv.FormatInt(n, 10))
	}
}

// withNode sets this process's node on entries of its journal.
func withNode(ds []Delivery) []Delivery {
	node := thisNode()
	for i := range ds {
		ds[i].Node = node
	}
	return ds
}
