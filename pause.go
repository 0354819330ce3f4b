package rereadyverify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// This file is pause and resume: "hold the webhooks while we migrate the
// database". The pause state is one small record in Caddy's storage, so it
// holds for every gateway on that storage and across restarts:
//
//	reready_verify/pause   a pauseRecord, JSON; absent while nothing is paused
//
// It is written only under the storage lock of its key, re-read after the
// lock is taken, and read back after the write (a lock may expire while
// its holder works). While a path is paused, every verified delivery on it
// is queued (202, reason paused) and the worker attempts none of it. The
// live path acts on a read of the record for at most pauseFresh (counted
// from before the read began), and a pause or resume answers only once
// pauseFresh has passed since its write: so when it has answered, every
// gateway on the storage acts on it, and a busy gateway reads the record
// about 20 times a second instead of once per delivery. A per-process
// copy (pauseHint) serves only the warning of handlers without `queue`:
// it may say "paused", never decide "not paused".

const (
	pausePrefix = "reready_verify"
	pauseKey    = pausePrefix + "/pause"

	// pauseAll is the path of a pause of every path (the metric's label
	// too).
	pauseAll = "*"

	// maxPausePath bounds a paused path's length.
	maxPausePath = 1024

	// pauseWriteTries is how often a pause or resume is written again when
	// reading it back shows another writer's record (a lost lock).
	pauseWriteTries = 3

	// pauseFresh is how long the live path acts on a pause state it read,
	// and how long a pause or resume waits after its write before it
	// answers.
	pauseFresh = 50 * time.Millisecond

	// pauseHintAge is how old the per-process copy of the pause state may
	// be before a handler without `queue` has it read again.
	pauseHintAge = 10 * time.Second

	// pauseHintWait bounds that read.
	pauseHintWait = 250 * time.Millisecond
)

// Pause is one paused path, as stored and as the admin API shows it.
type Pause struct {
	Path  string    `json:"path"`  // the request path, or "*" for every path
	Since time.Time `json:"since"` // when it was paused
	By    string    `json:"by"`    // the remote address of the admin request that paused it
}

// PauseState is what is paused: the answer of GET, POST /reready/pause and
// POST /reready/resume, and the stored record.
type PauseState struct {
	Paused []Pause `json:"paused"` // by path; empty when nothing is paused
}

// covers reports whether deliveries to path are paused, and by which
// entry ("*" or path itself).
func (s PauseState) covers(path string) (Pause, bool) {
	for _, p := range s.Paused {
		if p.Path == pauseAll || p.Path == path {
			return p, true
		}
	}
	return Pause{}, false
}

// has reports whether the state holds an entry for path exactly.
func (s PauseState) has(path string) (Pause, bool) {
	i := slices.IndexFunc(s.Paused, func(p Pause) bool { return p.Path == path })
	if i < 0 {
		return Pause{}, false
	}
	return s.Paused[i], true
}

// paths lists the paused paths ("*" included).
func (s PauseState) paths() []string {
	out := make([]string, len(s.Paused))
	for i, p := range s.Paused {
		out[i] = p.Path
	}
	return out
}

// decodePause reads a stored record. One that does not parse is taken as
// a pause of every path (corrupt): the gateway cannot tell what was
// paused, and queueing a delivery loses nothing, while forwarding it could
// break the pause. A resume of every path replaces it.
func decodePause(data []byte) (PauseState, error) {
	var s PauseState
	if err := json.Unmarshal(data, &s); err != nil {
		return PauseState{Paused: []Pause{{Path: pauseAll, By: "unreadable pause record"}}},
			fmt.Errorf("the pause record %s does not parse: %v", pauseKey, err)
	}
	return s, nil
}

// errPauseUnreadable: the storage did not answer a read of the pause
// state.
var errPauseUnreadable = errors.New("reading the pause state")

// pauseLogged rate-limits the error about an unreadable pause record,
// which the live path would otherwise log for every delivery.
var pauseLogged atomic.Int64

func (q *queue) logCorruptPause(err error) {
	now := time.Now().UnixNano()
	if last := pauseLogged.Load(); now-last >= int64(logEvery) && pauseLogged.CompareAndSwap(last, now) {
		q.logger.Error("pause: treating every path as paused until a resume of every path rewrites the record", zap.Error(err))
	}
}

// loadPause reads the pause state from storage, retrying a failed read a
// few times; an error means the gateway cannot tell. On file_system the
// record's absence (nothing paused, the usual case) is one fstatat, and
// while it exists a second fstatat finds whether it is the version
// parsed last (parsedPause).
func (q *queue) loadPause(ctx context.Context) (PauseState, error) {
	var seen fileID
	known := false
	if q.pauseDir != nil {
		name := baseName(pauseKey)
		if found, ok, err := q.pauseDir.exists(name); ok && err == nil && !found {
			return PauseState{}, nil
		}
		// Something is paused: the record as last parsed, if the file is
		// still that version (identified afresh by this stat).
		id, found, ok, err := q.pauseDir.identity(name)
		if ok && err == nil && found {
			if c := q.pauseParsed.Load(); c != nil && c.id == id {
				return c.state, nil
			}
			seen, known = id, true
		}
	}
	var data []byte
	err := retryStorage(ctx, func() error {
		var err error
		data, err = q.storage.Load(ctx, pauseKey)
		if errors.Is(err, fs.ErrNotExist) {
			data, err = nil, nil
		}
		return err
	})
	if err != nil {
		return PauseState{}, fmt.Errorf("%w: %w", errPauseUnreadable, err)
	}
	if data == nil {
		return PauseState{}, nil
	}
	s, err := decodePause(data)
	if err != nil {
		q.logCorruptPause(err)
		return s, nil
	}
	// Kept only if the file was the same version before and after the
	// read, so what is kept is what that version holds.
	if known {
		if id, found, ok, err := q.pauseDir.identity(baseName(pauseKey)); ok && err == nil && found && id == seen {
			q.pauseParsed.Store(&parsedPause{id: id, state: s})
		}
	}
	return s, nil
}

// parsedPause is the pause record of one version of its file (file_system
// only), so that while something is paused the live path parses it once,
// not per delivery. Every read stats the file first: a version written
// since, by any gateway, is read afresh.
type parsedPause struct {
	id    fileID
	state PauseState
}

// updatePause changes the pause state under its storage lock: change gets
// the record as stored (re-read under the lock) and edits it; an empty
// record is deleted. The record is read back after the write; while it
// does not show the change (another writer, whose lock had expired,
// overwrote it), it is written again. done reports whether the state read
// back shows the change. It returns the state as read back.
func (q *queue) updatePause(ctx context.Context, change func(*PauseState), done func(PauseState) bool) (PauseState, error) {
	var s PauseState
	for range pauseWriteTries {
		err := q.locked(ctx, pauseKey, func(ctx context.Context) error {
			data, err := q.storage.Load(ctx, pauseKey)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				s = PauseState{}
			case err != nil:
				return fmt.Errorf("reading the pause state: %w", err)
			default:
				if s, err = decodePause(data); err != nil {
					q.logger.Warn("pause: replacing an unreadable pause record", zap.Error(err))
					s = PauseState{}
				}
			}
			change(&s)
			if len(s.Paused) == 0 {
				if err := q.storage.Delete(ctx, pauseKey); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("deleting the pause state: %w", err)
				}
				return nil
			}
			slices.SortFunc(s.Paused, func(a, b Pause) int { return strings.Compare(a.Path, b.Path) })
			data, _ = json.Marshal(s)
			if err := q.storage.Store(ctx, pauseKey, data); err != nil {
				return fmt.Errorf("storing the pause state: %w", err)
			}
			return nil
		})
		if err != nil {
			return PauseState{}, err
		}
		if s, err = q.loadPause(ctx); err != nil {
			return PauseState{}, err
		}
		if done(s) {
			// This gateway's live path reads the change at once; the
			// others' copies, read before the write, are stale within
			// pauseFresh, and only then is the change answered.
			q.pauseLive.Store(nil)
			time.Sleep(pauseFresh)
			return s, nil
		}
		q.logger.Warn("pause: the pause state read back does not show the change (another gateway wrote it meanwhile); writing it again")
	}
	return s, fmt.Errorf("the pause state changed under this gateway %d times (a storage lock that does not hold?)", pauseWriteTries)
}

// pause pauses path ("*": every path) as of now, by by. A path paused
// already keeps its since and by.
func (q *queue) pause(ctx context.Context, path string, now time.Time, by string) (PauseState, error) {
	return q.updatePause(ctx, func(s *PauseState) {
		if _, ok := s.has(path); !ok {
			s.Paused = append(s.Paused, Pause{Path: path, Since: now.UTC(), By: by})
		}
	}, func(s PauseState) bool {
		_, ok := s.has(path)
		return ok
	})
}

// resume ends the pause of path, or with "*" every pause (every path and
// each path paused on its own). A path paused through "*" stays paused
// until "*" is resumed.
func (q *queue) resume(ctx context.Context, path string) (PauseState, error) {
	var ended []Pause
	s, err := q.updatePause(ctx, func(s *PauseState) {
		ended = ended[:0]
		s.Paused = slices.DeleteFunc(s.Paused, func(p Pause) bool {
			if path == pauseAll || p.Path == path {
				ended = append(ended, p)
				return true
			}
			return false
		})
	}, func(s PauseState) bool {
		// Ended means: the entries this resume removed are gone. A pause
		// made after it (a later since) is another's, and stays.
		for _, e := range ended {
			if p, ok := s.has(e.Path); ok && p.Since.Equal(e.Since) {
				return false
			}
		}
		return true
	})
	return s, err
}

// ---------------------------------------------------------------------
// The live path and the worker

// pausedLive reports whether a verified delivery to path must be queued
// because it is paused (see livePause). An error means the gateway cannot
// tell: the caller must not forward.
func (a *App) pausedLive(ctx context.Context, path string) (bool, error) {
	s, err := a.queue.livePause(ctx)
	if err != nil {
		return false, err
	}
	_, paused := s.covers(path)
	return paused, nil
}

// livePause is the pause state for the live path: the one read last, if
// that read began less than pauseFresh ago, or a new read of the storage's
// record (loadPause). A failed read is not kept.
func (q *queue) livePause(ctx context.Context) (PauseState, error) {
	return readLive(&q.pauseLive, pauseFresh, func() (PauseState, error) { return q.loadPause(ctx) })
}

// pauseHint is the pause state as this process last read it, for the
// warning of handlers without `queue` (warnIfPaused) only.
type pauseHint struct {
	state PauseState
	at    time.Time
}

// warnIfPaused is called for every verified delivery of a handler without
// `queue`, which forwards it whatever is paused (it has nowhere to keep
// it): it logs a warning once per path and process when that path is
// paused. It reads the copy the worker and the live path keep; when that
// is older than pauseHintAge, one request of the process (not the others
// meanwhile) reads the storage, for at most pauseHintWait.
func (h *Handler) warnIfPaused(r *http.Request, now time.Time) {
	a := h.app
	if a == nil || a.queue == nil {
		return
	}
	hint := a.pause.hint.Load()
	if (hint == nil || now.Sub(hint.at) > pauseHintAge) && a.pause.reading.CompareAndSwap(false, true) {
		ctx, cancel := context.WithTimeout(r.Context(), pauseHintWait)
		fresh := &pauseHint{at: now} // after a failed read too: not again for pauseHintAge
		if s, err := a.queue.loadPause(ctx); err == nil {
			fresh.state = s
		} else if hint != nil {
			fresh.state = hint.state
		}
		hint = fresh
		a.pause.hint.Store(hint)
		cancel()
		a.pause.reading.Store(false)
	}
	if hint == nil {
		return
	}
	path := originalPath(r)
	p, paused := hint.state.covers(path)
	if !paused {
		return
	}
	if _, warned := a.pause.warned.LoadOrStore(path, true); !warned {
		h.logger.Warn("pause: a delivery on a paused path is forwarded: this reready_verify handler has no `queue` to hold it",
			zap.String("path", clip(path)), zap.String("paused", p.Path), zap.Time("since", p.Since))
	}
}

// pausedForScan reads the pause state once per scan of the worker and
// sets the caddy_reready_paused gauge from it. An error means the worker
// cannot tell, and attempts nothing in this scan.
func (w *worker) pausedForScan(ctx context.Context) (PauseState, error) {
	s, err := w.q.loadPause(ctx)
	if err != nil {
		if w.ctx.Err() == nil {
			w.logOnce("pause", "queue: reading the pause state failed; attempting nothing until it can be read", zap.Error(err))
		}
		return s, err
	}
	w.recovered("pause", "queue: the pause state can be read again")
	w.app.pause.hint.Store(&pauseHint{state: s, at: time.Now()})
	// Set at a worker's first scan (the gauge may hold a previous config's
	// view), then only on a change: a scrape never sees a series missing
	// for a moment. paths is never nil.
	if paths := s.paths(); w.pausedPaths == nil || !slices.Equal(paths, w.pausedPaths) {
		w.app.metrics.setPaused(paths)
		w.pausedPaths = paths
	}
	return s, nil
}

// pausedNow reports whether an attempt of an item to path must not be made
// now: its path is paused, or the pause state cannot be read. Read again
// just before an attempt, so a pause answered after the scan began holds.
func (w *worker) pausedNow(ctx context.Context, path string) bool {
	s, err := w.q.loadPause(ctx)
	if err != nil {
		return true
	}
	_, paused := s.covers(path)
	return paused
}

// resumed makes the pending deliveries of path (every path for "*") due
// now, as a live success on the path does (kick): the worker then sends
// them, in each return's order, within its concurrency bound. Other
// gateways pick them up at their next scan.
func (w *worker) resumed(path string) {
	if w == nil {
		return
	}
	if path != pauseAll {
		w.kick(path)
		return
	}
	w.mu.Lock()
	paths := map[string]bool{}
	for _, c := range w.items {
		if c.item.Status == ItemPending {
			paths[c.item.path()] = true
		}
	}
	w.mu.Unlock()
	for p := range paths {
		w.kick(p)
	}
	w.wake()
}

// ---------------------------------------------------------------------
// The admin API: GET, POST /pause and POST /resume

// pauseRequest is the optional body of POST /pause and /resume.
type pauseRequest struct {
	Path string `json:"path"` // "" or "*": every path
}

// readPauseRequest reads the optional JSON body: none, {} or a path.
func readPauseRequest(r *http.Request) (string, *opsError) {
	data, err := io.ReadAll(io.LimitReader(r.Body, 8<<10))
	if err != nil {
		return "", opsErrorf(http.StatusBadRequest, "reading the body: %v", err)
	}
	var req pauseRequest
	if len(strings.TrimSpace(string(data))) > 0 {
		if err := json.Unmarshal(data, &req); err != nil {
			return "", opsErrorf(http.StatusBadRequest, `invalid body: want {"path": "/webhooks/reready"} or none: %v`, err)
		}
	}
	switch p := req.Path; {
	case p == "" || p == pauseAll:
		return pauseAll, nil
	case !strings.HasPrefix(p, "/") || len(p) > maxPausePath || strings.ContainsAny(p, "?#"):
		return "", opsErrorf(http.StatusBadRequest, "invalid path %q: want a request path such as /webhooks/reready (no query), or none for every path", clip(p))
	default:
		return p, nil
	}
}

// servePauseState answers GET /pause: what is paused, read from storage.
func servePauseState(w http.ResponseWriter, r *http.Request) *opsError {
	a := liveApp.Load()
	if a == nil {
		return writeJSON(w, PauseState{Paused: []Pause{}})
	}
	s, err := a.queue.loadPause(r.Context())
	if err != nil {
		return opsErrorf(http.StatusServiceUnavailable, "%v", err)
	}
	return writePauseState(w, s)
}

// servePause answers POST /pause. Without a handler that queues, nothing
// would hold the deliveries: it refuses with 409.
func servePause(w http.ResponseWriter, r *http.Request) *opsError {
	path, oerr := readPauseRequest(r)
	if oerr != nil {
		return oerr
	}
	a := liveApp.Load()
	if a == nil || !a.queueOn {
		return opsErrorf(http.StatusConflict, "pause needs queue on: no reready_verify handler of the running config has `queue` on, so nothing would hold the deliveries; they would be forwarded")
	}
	now := a.now()
	s, err := a.queue.pause(r.Context(), path, now, r.RemoteAddr)
	if err != nil {
		return opsErrorf(http.StatusServiceUnavailable, "pausing: %v", err)
	}
	p, _ := s.has(path)
	a.logger.Warn("pause: deliveries are held in the queue until resumed", zap.String("path", path),
		zap.Time("since", p.Since), zap.String("by", p.By))
	a.emitPause("reready.paused", p)
	return writePauseState(w, s)
}

// serveResume answers POST /resume. It works without a handler that
// queues too, so a pause left by an earlier config can be ended.
func serveResume(w http.ResponseWriter, r *http.Request) *opsError {
	path, oerr := readPauseRequest(r)
	if oerr != nil {
		return oerr
	}
	a := liveApp.Load()
	if a == nil {
		return opsErrorf(http.StatusConflict, "no running reready app to resume through")
	}
	s, err := a.queue.resume(r.Context(), path)
	if err != nil {
		return opsErrorf(http.StatusServiceUnavailable, "resuming: %v", err)
	}
	a.logger.Info("pause: resumed; held deliveries go now, in each return's order", zap.String("path", path))
	a.emitPause("reready.resumed", Pause{Path: path, Since: a.now().UTC(), By: r.RemoteAddr})
	a.worker.Load().resumed(path)
	return writePauseState(w, s)
}

func writePauseState(w http.ResponseWriter, s PauseState) *opsError {
	if s.Paused == nil {
		s.Paused = []Pause{}
	}
	return writeJSON(w, s)
}

// emitPause sends reready.paused or reready.resumed, with data path
// ("*" for every path), since (when it happened) and by.
func (a *App) emitPause(name string, p Pause) {
	if a.events == nil {
		return
	}
	a.events.Emit(a.ctx, name, map[string]any{
		"path":  p.Path,
		"since": p.Since.Format(time.RFC3339),
		"by":    p.By,
	})
}

// pauseCache is what a process keeps of the pause state: the hint, and
// the paths a handler without `queue` warned about.
type pauseCache struct {
	hint    atomic.Pointer[pauseHint]
	reading atomic.Bool // a background read of the hint runs
	warned  sync.Map    // path -> true
}
