package rereadyverify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"go.uber.org/zap"
)

// This file is the per-return line of the queue: one record per device
// return in storage, listing its queued deliveries in the order they
// arrived, so that a return's deliveries are redelivered in that order
// and a delivery arriving while earlier ones wait is held behind them.

// returnRecord lists a return's pending deliveries, oldest first.
type returnRecord struct {
	DeviceReturnID string   `json:"device_return_id"`
	IDs            []string `json:"ids"`

	stored bool // loadReturn read it from the storage (storeReturn: not a new line)
}

// lineFresh is how long the live path acts on a read of the returns'
// directory that found no line at all (counted from before the read
// began), and how long the write that starts a line waits before the
// enqueue, retry or revive that made it goes on to answer. So once a
// delivery was answered 202, every gateway on the storage holds its
// return's later deliveries behind it, while a gateway whose queue is
// empty reads the directory about 20 times a second instead of once per
// delivery.
const lineFresh = 50 * time.Millisecond

// returnKey names a return's record by a digest of its id, which is any
// string the payload carried.
func returnKey(returnID string) string {
	d := returnDigest(returnID)
	return queueReturnsPrefix + "/" + hex.EncodeToString(d[:])
}

// returnDigest is the digest that names a return's record.
func returnDigest(returnID string) (d [16]byte) {
	sum := sha256.Sum256([]byte(returnID))
	copy(d[:], sum[:])
	return d
}

// loadReturn reads a return's record; a missing or damaged one is empty.
func (q *queue) loadReturn(ctx context.Context, returnID string) (returnRecord, error) {
	rec := returnRecord{DeviceReturnID: returnID}
	data, err := q.storage.Load(ctx, returnKey(returnID))
	if errors.Is(err, fs.ErrNotExist) {
		return rec, nil
	}
	if err != nil {
		return rec, fmt.Errorf("loading the queue of return %q: %w", clip(returnID), err)
	}
	if err := json.Unmarshal(data, &rec); err != nil || rec.DeviceReturnID != returnID {
		q.logger.Warn("queue: ignoring a damaged return record", zap.String("key", returnKey(returnID)))
		return returnRecord{DeviceReturnID: returnID}, nil
	}
	rec.stored = true
	return rec, nil
}

func (q *queue) storeReturn(ctx context.Context, rec returnRecord) error {
	key := returnKey(rec.DeviceReturnID)
	if len(rec.IDs) == 0 {
		if err := q.storage.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("deleting %s: %w", key, err)
		}
		return nil
	}
	data, _ := json.Marshal(rec)
	if err := q.storage.Store(ctx, key, data); err != nil {
		return fmt.Errorf("storing %s: %w", key, err)
	}
	if !rec.stored {
		// A new line: this gateway's live path sees it at once; the
		// others' reads that found no line, made before this write, are
		// stale within lineFresh, and only then is the delivery answered.
		q.linesRead.Store(nil)
		time.Sleep(lineFresh)
	}
	return nil
}

// held reports whether returnID has pending deliveries, so a live one for
// it must queue behind them. Unless a read of the returns' directory made
// less than lineFresh ago found no line at all (noLines), it asks the
// storage for the return's record, which exists exactly while its line is
// not empty: another gateway may have queued one a moment ago. A gateway's
// memory of its own queue is never asked. A failed read is tried again a
// few times, then returned: the caller cannot tell, and must not forward.
func (q *queue) held(ctx context.Context, returnID string) (bool, error) {
	if q.noLines(ctx) {
		return false, nil
	}
	if q.returns != nil {
		d := returnDigest(returnID)
		var name [2 * len(d)]byte
		hex.Encode(name[:], d[:])
		if found, ok, err := q.returns.exists(string(name[:])); ok && err == nil {
			return found, nil
		}
	}
	key := returnKey(returnID)
	held := false
	err := retryStorage(ctx, func() error {
		_, err := q.storage.Stat(ctx, key)
		held = err == nil
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("reading the queue of return %q: %w", clip(returnID), err)
	}
	return held, nil
}

// noLines reports whether no return has a line, as a read of the returns'
// directory that began less than lineFresh ago found (see lineFresh). It
// is false when that read found one or could not tell: held then asks for
// the return's own record.
func (q *queue) noLines(ctx context.Context) bool {
	none, _ := readLive(&q.linesRead, lineFresh, func() (bool, error) {
		if q.returns != nil {
			empty, ok := q.returns.empty()
			return ok && empty, nil
		}
		// Only an answer without error counts: a failed or partial
		// listing is not an empty one.
		keys, err := q.storage.List(ctx, queueReturnsPrefix, false)
		return err == nil && len(keys) == 0, nil
	})
	return none
}

// leaveLine removes id from its return's line (delivered, dead or dropped).
func (q *queue) leaveLine(ctx context.Context, returnID, id string) error {
	return q.locked(ctx, returnKey(returnID), func(ctx context.Context) error {
		rec, err := q.loadReturn(ctx, returnID)
		if err != nil || !slices.Contains(rec.IDs, id) {
			return err
		}
		rec.IDs = slices.DeleteFunc(rec.IDs, func(s string) bool { return s == id })
		return q.storeReturn(ctx, rec)
	})
}

// joinLine puts it in its return's line, before any later arrival (by
// received time): a dead delivery retried by hand or resent, or a pending
// one missing from its line (a gateway stopped between storing the two, or
// a lock lost on a networked storage let two writes of the line cross).
func (q *queue) joinLine(ctx context.Context, it *queueItem) error {
	return q.locked(ctx, returnKey(it.DeviceReturnID), func(ctx context.Context) error {
		rec, err := q.loadReturn(ctx, it.DeviceReturnID)
		if err != nil {
			return err
		}
		return q.insertInLine(ctx, &rec, it)
	})
}

// insertInLine adds it to rec before any later arrival and stores rec,
// unless it is there already. The caller holds the return's lock.
func (q *queue) insertInLine(ctx context.Context, rec *returnRecord, it *queueItem) error {
	if slices.Contains(rec.IDs, it.ID) {
		return nil
	}
	at := len(rec.IDs)
	for i, other := range rec.IDs {
		o, err := q.loadItem(ctx, other)
		if err == nil && o.ReceivedAt.After(it.ReceivedAt) {
			at = i
			break
		}
	}
	rec.IDs = slices.Insert(rec.IDs, at, it.ID)
	return q.storeReturn(ctx, *rec)
}

// firstInLine reports whether it may be attempted now: it is the first
// pending delivery of its return's line. An item missing from its line is
// put back in it first. It reads the line under the return's lock, so no
// enqueue is halfway through.
func (q *queue) firstInLine(ctx context.Context, it *queueItem) (bool, error) {
	first := false
	err := q.locked(ctx, returnKey(it.DeviceReturnID), func(ctx context.Context) error {
		rec, err := q.loadReturn(ctx, it.DeviceReturnID)
		if err != nil {
			return err
		}
		if !slices.Contains(rec.IDs, it.ID) {
			q.logger.Warn("queue: a pending delivery was missing from its return's line; put back in arrival order",
				zap.String("id", it.ID))
			if err := q.insertInLine(ctx, &rec, it); err != nil {
				return err
			}
		}
		head, _, err := q.firstPending(ctx, rec.IDs)
		first = head == it.ID
		return err
	})
	return first, err
}

// firstPending walks a line to its first pending delivery. stale holds
// the ids before it that no longer wait (delivered, dropped, dead or
// unreadable as JSON). An id that cannot be read now stops the walk: it
// is returned as head, with the error, so the order is kept.
func (q *queue) firstPending(ctx context.Context, ids []string) (head string, stale []string, err error) {
	for _, id := range ids {
		it, err := q.loadItem(ctx, id)
		switch {
		case err == nil && it.Status == ItemPending:
			return id, stale, nil
		case err != nil && !errors.Is(err, errItemNotFound) && !errors.Is(err, errItemCorrupt):
			return id, stale, err
		}
		stale = append(stale, id)
	}
	return "", stale, nil
}

// head is the delivery of returnID's line the worker tries first: the
// first pending one of the stored line, or, when the line cannot be read
// or lacks it (the worker puts it back), the earliest one listed
// (earliest).
func (q *queue) head(ctx context.Context, returnID, earliest string) string {
	rec, err := q.loadReturn(ctx, returnID)
	if err != nil {
		return earliest
	}
	head, _, err := q.firstPending(ctx, rec.IDs)
	if err != nil || head == "" {
		return earliest
	}
	return head
}

// heldBehind is the delivery it waits for in its return's line, or "".
func (q *queue) heldBehind(ctx context.Context, it *queueItem) string {
	if it.Status != ItemPending {
		return ""
	}
	if head := q.head(ctx, it.DeviceReturnID, it.ID); head != it.ID {
		return head
	}
	return ""
}
