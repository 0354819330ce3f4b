package rereadyverify

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI serves the journal and the queue on Caddy's admin endpoint:
//
//	GET    /reready/deliveries?return_id=&state=&outcome=&test=&limit=&after=
//	GET    /reready/summary   counters and per-minute counts, last hour
//	GET    /reready/queue
//	POST   /reready/queue/<id>/retry
//	DELETE /reready/queue/<id>
//	GET    /reready/pause     what is paused (pause.go)
//	POST   /reready/pause     {"path": "..."} or no body: every path
//	POST   /reready/resume    the same
//
// They are routed by opsMux (routes.go), as the page's API is: another
// method on one of these paths is refused 405 with Allow, and errors are
// JSON ({"error": "..."}, written by the admin endpoint from the
// caddy.APIError the handler returns).
//
// It holds no state: admin modules are provisioned before the apps on
// every config load, so it finds the running reready app per request.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.reready",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: "/reready/",
		Handler: caddy.AdminHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			if err := serveOps(w, beneath(r, "/reready")); err != nil {
				return caddy.APIError{HTTPStatus: err.status, Err: errors.New(err.msg)}
			}
			return nil
		}),
	}}
}

// opsError is a refused operation: a status and a message for the JSON
// error body.
type opsError struct {
	status int
	msg    string
}

func opsErrorf(status int, format string, args ...any) *opsError {
	return &opsError{status: status, msg: fmt.Sprintf(format, args...)}
}

// serveDeliveries answers GET /deliveries: the journal, filtered, with
// its epoch in journalHeader.
func serveDeliveries(w http.ResponseWriter, r *http.Request) *opsError {
	f, err := deliveryFilter(r)
	if err != nil {
		return err
	}
	w.Header().Set(journalHeader, processJournal.epoch)
	if q, ok, err := rangeOf(r, f, time.Now()); err != nil {
		return err
	} else if ok {
		return serveDeliveryRange(w, r, q)
	}
	return writeJSON(w, withNode(processJournal.query(f)))
}

// serveSummary answers GET /summary.
func serveSummary(w http.ResponseWriter, _ *http.Request) *opsError {
	return writeJSON(w, processJournal.summary(time.Now()))
}

// serveQueue answers GET /queue: the queue's items, none without a
// running reready app.
func serveQueue(w http.ResponseWriter, r *http.Request) *opsError {
	a := liveApp.Load()
	if a == nil {
		return writeJSON(w, []QueueItem{})
	}
	items, err := a.queueView(r.Context())
	if err != nil {
		return opsErrorf(http.StatusServiceUnavailable, "reading the queue: %v", err)
	}
	return writeJSON(w, items)
}

// serveRetry answers POST /queue/{id}/retry.
func serveRetry(w http.ResponseWriter, r *http.Request) *opsError {
	return changeItem(w, r, r.PathValue("id"), true)
}

// serveDrop answers DELETE /queue/{id}.
func serveDrop(w http.ResponseWriter, r *http.Request) *opsError {
	return changeItem(w, r, r.PathValue("id"), false)
}

// changeItem retries or drops a queued delivery.
func changeItem(w http.ResponseWriter, r *http.Request, id string, retry bool) *opsError {
	a := liveApp.Load()
	if !validItemName(id) || a == nil {
		return opsErrorf(http.StatusNotFound, "no queued delivery %q", clip(id))
	}
	var it *queueItem
	var err error
	if retry {
		it, err = a.queue.retry(r.Context(), id, a.now())
	} else {
		it, err = a.queue.drop(r.Context(), id)
	}
	switch {
	case errors.Is(err, errItemNotFound):
		return opsErrorf(http.StatusNotFound, "no queued delivery %q", id)
	case errors.Is(err, errItemCorrupt):
		return opsErrorf(http.StatusConflict, "%v", err)
	case err != nil:
		return opsErrorf(http.StatusServiceUnavailable, "%v", err)
	}
	if retry {
		a.logger.Info("queued delivery to be retried now, as asked", zap.String("id", id))
	} else {
		a.logger.Info("queued delivery dropped, as asked", zap.String("id", id),
			zap.String("device_return_id", clip(it.DeviceReturnID)), zap.String("state", clip(it.State)))
	}
	a.changed(id)
	v := it.view()
	if head := a.queue.heldBehind(r.Context(), it); retry && head != "" {
		v.HeldBehind, v.NextAttemptAt = &head, nil
	}
	return writeJSON(w, v)
}

// deliveryFilter reads the query parameters of /deliveries.
func deliveryFilter(r *http.Request) (DeliveryFilter, *opsError) {
	q := r.URL.Query()
	f := DeliveryFilter{ReturnID: q.Get("return_id"), State: q.Get("state"), Outcome: q.Get("outcome")}
	if f.Outcome != "" && !slices.Contains(Outcomes, f.Outcome) {
		return f, opsErrorf(http.StatusBadRequest, "invalid outcome %q: want one of %s", clip(f.Outcome), strings.Join(Outcomes, ", "))
	}
	switch v := q.Get("test"); v {
	case "":
	case "true", "false":
		test := v == "true"
		f.Test = &test
	default:
		return f, opsErrorf(http.StatusBadRequest, "invalid test %q: want true or false", clip(v))
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxDeliveryLimit {
			return f, opsErrorf(http.StatusBadRequest, "invalid limit %q: want 1 to %d", clip(v), maxDeliveryLimit)
		}
		f.Limit = n
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return f, opsErrorf(http.StatusBadRequest, "invalid after %q: want a sequence number", clip(v))
		}
		f.After = n
	}
	return f, nil
}

func writeJSON(w http.ResponseWriter, v any) *opsError {
	data, err := json.Marshal(v)
	if err != nil {
		return opsErrorf(http.StatusInternalServerError, "encoding: %v", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(data, '\n'))
	return nil
}

// Interface guards
var _ caddy.AdminRouter = (*AdminAPI)(nil)
