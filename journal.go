package rereadyverify

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"
)

// This file is the delivery journal: a bounded, in-memory record of every
// request that reached a reready_verify handler in this process, and of
// every redelivery attempt, newest kept. It never holds a secret, the
// token, a MAC, the signature header or a body: only what the operator
// needs to answer "did it arrive, and what did the app say?". Its writers
// are here too: journalLive (a live request, from the handler) and
// recordItem (a queued item's arrival, attempt or end, from the app).
//
// The process keeps one journal across config reloads, so a reload neither
// empties it nor restarts its sequence numbers (which `caddy reready
// deliveries --follow` and the page use to ask for what is new).

// DefaultJournalSize is how many entries the journal keeps by default.
const DefaultJournalSize = 10_000

// maxJournalSize bounds the journal_size option.
const maxJournalSize = 10_000_000

// Journal outcomes: what happened to a request or redelivery attempt.
const (
	OutcomeForwarded   = "forwarded"   // passed on live; status is what the sender got
	OutcomeRejected    = "rejected"    // refused by a check, or the queue was full
	OutcomeReplayed    = "replayed"    // a repeat, stopped by the replay gate
	OutcomeObserved    = "observed"    // failed a check, passed on in observe mode
	OutcomeQueued      = "queued"      // stored for redelivery as it arrived (the app failed it, or it is held)
	OutcomeRetrying    = "retrying"    // a redelivery attempt failed; the delivery stays queued and is tried again
	OutcomeRedelivered = "redelivered" // a queued delivery the app took
	OutcomeDead        = "dead"        // a queued delivery given up on
)

// Outcomes lists the journal outcomes, for validating filters.
var Outcomes = []string{OutcomeForwarded, OutcomeRejected, OutcomeReplayed, OutcomeObserved,
	OutcomeQueued, OutcomeRetrying, OutcomeRedelivered, OutcomeDead}

// journalEntry is one record. Strings in it are owned by the journal
// (cloned or constants), so it keeps no request memory alive.
type journalEntry struct {
	seq            uint64
	at             time.Time // when it was recorded: a request's end, an attempt's end
	probe          bool      // an attempt made as its failing route's probe
	id             deliveryID
	outcome        string
	reason         Reason
	status         int
	upstreamStatus int
	attempt        int
	returnID       ownedString
	state          string
	test           bool
	verified       string
	key            int
	duration       time.Duration
	host           string
	path           string
	remoteAddr     string
}

// Delivery is a journal entry as the admin API, the page and the CLI show
// it.
type Delivery struct {
	Seq            uint64  `json:"seq"`
	Time           string  `json:"time"`
	DeliveryID     string  `json:"delivery_id"`
	Outcome        string  `json:"outcome"`
	Reason         string  `json:"reason"`
	Status         int     `json:"status"`
	UpstreamStatus int     `json:"upstream_status"`
	Attempt        int     `json:"attempt"`
	Probe          bool    `json:"probe"`
	DeviceReturnID string  `json:"device_return_id"`
	State          string  `json:"state"`
	Test           bool    `json:"test"`
	Verified       string  `json:"verified"`
	Key            int     `json:"key"`
	DurationMS     float64 `json:"duration_ms"`
	Host           string  `json:"host"`
	Path           string  `json:"path"`
	RemoteAddr     string  `json:"remote_addr"`
	Node           string  `json:"node"` // the gateway that recorded it (history.go)
}

func (e *journalEntry) view() Delivery {
	d := Delivery{
		Seq:            e.seq,
		Time:           e.at.UTC().Format(time.RFC3339Nano),
		Outcome:        e.outcome,
		Reason:         string(e.reason),
		Status:         e.status,
		UpstreamStatus: e.upstreamStatus,
		Attempt:        e.attempt,
		Probe:          e.probe,
		DeviceReturnID: e.returnID.String(),
		State:          e.state,
		Test:           e.test,
		Verified:       e.verified,
		Key:            e.key,
		DurationMS:     float64(e.duration.Microseconds()) / 1000,
		Host:           e.host,
		Path:           e.path,
		RemoteAddr:     e.remoteAddr,
	}
	if !e.id.isZero() {
		d.DeliveryID = e.id.String()
	}
	return d
}

// journal is a ring of entries. It is safe for concurrent use.
type journal struct {
	mu       sync.Mutex
	ring     []journalEntry
	start    int // index of the oldest entry
	n        int // entries held
	nextSeq  uint64
	lastAt   time.Time         // the time of the entry added last
	interned map[string]string // hosts and paths, one copy each
	epoch    string            // tells this process's sequence from another's
}

func newJournal(size int) *journal {
	var b [8]byte
	_, _ = rand.Read(b[:])
	j := &journal{nextSeq: 1, epoch: hex.EncodeToString(b[:]), interned: map[string]string{}}
	j.resize(size)
	return j
}

// processJournal is the process's journal, kept across config reloads.
var processJournal = newJournal(DefaultJournalSize)

// resize keeps the newest entries that fit in size (<= 0: the default).
func (j *journal) resize(size int) {
	if size <= 0 {
		size = DefaultJournalSize
	}
	size = min(size, maxJournalSize)
	j.mu.Lock()
	defer j.mu.Unlock()
	if size == len(j.ring) {
		return
	}
	keep := min(j.n, size)
	ring := make([]journalEntry, size)
	for i := 0; i < keep; i++ {
		ring[i] = j.ring[(j.start+j.n-keep+i)%len(j.ring)]
	}
	j.ring, j.start, j.n = ring, 0, keep
}

// ownedString is a string a journal entry owns without an allocation of
// its own when it is short (a return id is usually a 36-character UUID).
type ownedString struct {
	buf  [40]byte
	n    uint8
	long string // when it does not fit buf: a copy
}

func (o *ownedString) set(s string) {
	if len(s) <= len(o.buf) {
		o.n = uint8(copy(o.buf[:], s))
		o.long = ""
		return
	}
	o.n, o.long = 0, strings.Clone(s)
}

// String returns a copy.
func (o *ownedString) String() string {
	if o.long != "" {
		return o.long
	}
	return string(o.buf[:o.n])
}

// peek returns the string without copying it; valid while the entry is
// not overwritten (read it under the journal's lock).
func (o *ownedString) peek() string {
	if o.long != "" {
		return o.long
	}
	return unsafe.String(&o.buf[0], int(o.n))
}

// maxInterned bounds the hosts and paths the journal keeps one copy of.
const maxInterned = 1024

// intern returns the journal's copy of s (hosts and paths repeat), so an
// entry neither allocates nor keeps its request's memory alive. Called
// under j.mu.
func (j *journal) intern(s string) string {
	if v, ok := j.interned[s]; ok {
		return v
	}
	v := strings.Clone(s)
	if len(j.interned) < maxInterned {
		j.interned[v] = v
	}
	return v
}

// add records e, assigning its sequence number and, unless it has one
// (tests), its time: now, and never before the entry added last, so the
// newest entry by seq is also the newest by time. Its host and path are
// replaced by the journal's own copies. It returns the entry as recorded.
// The clock is read before the lock is taken, to keep the critical
// section short.
func (j *journal) add(e journalEntry) journalEntry {
	stamp := e.at.IsZero()
	if stamp {
		e.at = time.Now()
	}
	j.mu.Lock()
	e.host, e.path = j.intern(e.host), j.intern(e.path)
	if stamp {
		if e.at.Before(j.lastAt) {
			e.at = j.lastAt
		}
		j.lastAt = e.at
	}
	e.seq = j.nextSeq
	j.nextSeq++
	if j.n < len(j.ring) {
		j.ring[(j.start+j.n)%len(j.ring)] = e
		j.n++
	} else {
		j.ring[j.start] = e
		j.start = (j.start + 1) % len(j.ring)
	}
	j.mu.Unlock()
	return e
}

// DeliveryFilter selects journal entries. Zero fields match everything.
type DeliveryFilter struct {
	ReturnID string // exact device_return_id
	State    string // exact state
	Outcome  string // exact outcome
	Test     *bool  // only test events (true) or only the others (false)
	After    uint64 // only entries with a larger seq
	Limit    int    // at most this many, newest first; <= 0: DefaultDeliveryLimit
}

// DefaultDeliveryLimit is how many entries a query returns by default.
const DefaultDeliveryLimit = 100

// maxDeliveryLimit bounds one query's answer.
const maxDeliveryLimit = 10_000

// query returns the matching entries, newest first.
func (j *journal) query(f DeliveryFilter) []Delivery {
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultDeliveryLimit
	}
	limit = min(limit, maxDeliveryLimit)
	out := []Delivery{}
	j.mu.Lock()
	defer j.mu.Unlock()
	for i := j.n - 1; i >= 0 && len(out) < limit; i-- {
		e := &j.ring[(j.start+i)%len(j.ring)]
		if e.seq <= f.After {
			break
		}
		if f.ReturnID != "" && e.returnID.peek() != f.ReturnID ||
			f.State != "" && e.state != f.State ||
			f.Outcome != "" && e.outcome != f.Outcome ||
			f.Test != nil && e.test != *f.Test {
			continue
		}
		out = append(out, e.view())
	}
	return out
}

// last returns the newest sequence number handed out (0 if none).
func (j *journal) last() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.nextSeq - 1
}

// ownString copies s unless it is a documented state (a constant), so a
// journal entry does not keep the request's memory alive.
func ownString(s string) string {
	if i := verify.StateIndex(s); i < len(verify.States) {
		return verify.States[i]
	}
	return strings.Clone(s)
}

// summaryMinutes is how many minutes a summary covers, the current one
// last.
const summaryMinutes = 60

// journalSkew bounds how far entries given their own time (tests) may be
// out of time order; entries stamped by add are in order.
const journalSkew = 10 * time.Minute

// Summary is the journal's last hour in numbers: the page's counters and
// chart, and GET /reready/summary.
type Summary struct {
	From     string          `json:"from"`     // start of the first minute, RFC 3339 UTC
	To       string          `json:"to"`       // now
	Verified int             `json:"verified"` // live requests that passed every check: forwarded, queued or acknowledged as replays
	Rejected int             `json:"rejected"` // outcome rejected
	Queued   int             `json:"queued"`   // deliveries queued as they arrived (not failed redeliveries)
	Dead     int             `json:"dead"`     // queued deliveries given up on
	Partial  bool            `json:"partial"`  // the journal no longer holds all of the hour
	Minutes  []MinuteSummary `json:"minutes"`  // one per minute, oldest first
}

// MinuteSummary counts one minute's entries by outcome; outcomes with none
// are left out.
type MinuteSummary struct {
	Start  string         `json:"start"`
	Counts map[string]int `json:"counts"`
}

// live reports whether e records a request as it arrived, rather than a
// redelivery attempt of a queued one.
func (e *journalEntry) live() bool {
	switch e.outcome {
	case OutcomeRetrying, OutcomeRedelivered, OutcomeDead:
		return false
	case OutcomeQueued:
		return e.reason != ReasonReplayRequested
	}
	return true
}

// summary counts the entries of the summaryMinutes minutes up to now.
func (j *journal) summary(now time.Time) Summary {
	from := now.Truncate(time.Minute).Add(-(summaryMinutes - 1) * time.Minute)
	s := Summary{
		From:    from.UTC().Format(time.RFC3339),
		To:      now.UTC().Format(time.RFC3339),
		Minutes: make([]MinuteSummary, summaryMinutes),
	}
	for i := range s.Minutes {
		s.Minutes[i] = MinuteSummary{Start: from.Add(time.Duration(i) * time.Minute).UTC().Format(time.RFC3339), Counts: map[string]int{}}
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for i := j.n - 1; i >= 0; i-- {
		e := &j.ring[(j.start+i)%len(j.ring)]
		if e.at.Before(from.Add(-journalSkew)) {
			break
		}
		if e.at.Before(from) || e.at.After(now) {
			continue
		}
		s.Minutes[int(e.at.Sub(from)/time.Minute)].Counts[e.outcome]++
		switch {
		case e.outcome == OutcomeRejected:
			s.Rejected++
		case e.outcome == OutcomeDead:
			s.Dead++
		case e.outcome == OutcomeQueued:
			s.Queued++
		}
		// Passed every check: a request refused after its signature was
		// checked (a bad payload, a replay in flight, a full queue) is
		// rejected, not verified.
		if e.live() && e.verified != "" && e.verified != "none" && e.outcome != OutcomeRejected {
			s.Verified++
		}
	}
	// Entries were dropped, and the oldest kept one is within the hour.
	s.Partial = j.n > 0 && j.nextSeq-1 > uint64(j.n) && !j.ring[j.start].at.Before(from)
	return s
}

// journalClip bounds the strings a journal entry keeps from a request, so
// 10,000 entries stay small whatever clients send.
const journalClip = 256

// journalLive records a live request. st is nil for a request refused
// before its body was read.
func (h *Handler) journalLive(r *http.Request, st *requestState, start time.Time, outcome string, reason Reason, status, upstream int) {
	if h.app == nil {
		return
	}
	e := journalEntry{
		outcome:        outcome,
		reason:         reason,
		status:         status,
		upstreamStatus: upstream,
		duration:       time.Since(start),
		host:           verify.Clip(r.Host, journalClip), // the journal keeps its own copies
		path:           verify.Clip(r.URL.Path, journalClip),
		remoteAddr:     verify.Clip(r.RemoteAddr, journalClip), // the connection's own string
	}
	if st != nil {
		e.id = st.id
		e.returnID.set(verify.Clip(st.event.DeviceReturnID, journalClip))
		e.state = ownString(verify.Clip(st.event.State, journalClip))
		e.test = st.event.Test
		e.verified = st.auth.verified
		e.key = st.auth.keyNumber()
		if outcome == OutcomeForwarded || outcome == OutcomeObserved {
			e.attempt = 1
		}
	}
	h.app.record(e)
	h.keepLive(r, st)
}

// keyNumber is the 1-based position of the secret that matched, 0 when no
// signature was checked.
func (a *auth) keyNumber() int {
	if !a.signed {
		return 0
	}
	return a.sig.Key + 1
}

// record adds an entry to the journal and, with history on, hands it to
// the history's buffer (no storage call).
func (a *App) record(e journalEntry) {
	e = a.journal.add(e)
	if !a.history.add(e) {
		// This app's history has stopped (a request or an attempt of an
		// old config still running after a reload): the running config's
		// history writes it, if it has one.
		if cur := liveApp.Load(); cur != nil && cur != a {
			cur.history.add(e)
		}
	}
}

// recordItem journals what happened to a queued item and emits the
// matching event.
func (a *App) recordItem(it *queueItem, outcome string, reason Reason, res attemptResult) {
	id, _ := parseDeliveryID(it.ID)
	path, host := it.path(), it.Host
	e := journalEntry{
		id:             id,
		probe:          res.probe,
		outcome:        outcome,
		reason:         reason,
		status:         res.status,
		upstreamStatus: res.upstream,
		attempt:        it.Attempts,
		state:          ownString(it.State),
		test:           it.Test,
		verified:       it.Verified,
		key:            it.Key,
		duration:       res.duration,
		host:           host,
		path:           path,
		remoteAddr:     it.RemoteAddr,
	}
	e.returnID.set(it.DeviceReturnID)
	a.record(e)
	if it.ReplayID == "" { // a replay's body is kept already, as it first arrived
		a.history.keepItem(it)
	}
	switch outcome {
	case OutcomeRedelivered:
		a.emit("reready.redelivered", it, res)
	case OutcomeDead:
		a.emit("reready.dead", it, res)
	case OutcomeQueued:
		a.emit("reready.queued", it, res)
	}
}
