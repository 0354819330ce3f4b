package rereadyverify

import (
	"fmt"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"
)

func TestJournalRingAndQuery(t *testing.T) {
	j := newJournal(5)
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for i := 1; i <= 7; i++ {
		outcome := OutcomeForwarded
		if i%2 == 0 {
			outcome = OutcomeRejected
		}
		j.add(journalEntry{at: t0.Add(time.Duration(i) * time.Second), outcome: outcome,
			returnID: rid(fmt.Sprintf("r%d", i%3)), state: verify.StateComplete, status: 200 + i})
	}
	all := j.query(DeliveryFilter{})
	if len(all) != 5 {
		t.Fatalf("%d entries kept, want 5", len(all))
	}
	for i, d := range all {
		if want := uint64(7 - i); d.Seq != want {
			t.Errorf("entry %d has seq %d, want %d (newest first)", i, d.Seq, want)
		}
	}
	if all[0].Time != "2026-11-29T12:00:07Z" {
		t.Errorf("time = %q, want RFC 3339 UTC", all[0].Time)
	}
	tests := []struct {
		name string
		f    DeliveryFilter
		want []uint64
	}{
		{"outcome", DeliveryFilter{Outcome: OutcomeRejected}, []uint64{6, 4}},
		{"return id", DeliveryFilter{ReturnID: "r1"}, []uint64{7, 4}},
		{"state none", DeliveryFilter{State: verify.StateFailed}, nil},
		{"limit", DeliveryFilter{Limit: 2}, []uint64{7, 6}},
		{"after", DeliveryFilter{After: 5}, []uint64{7, 6}},
		{"after and filter", DeliveryFilter{After: 3, Outcome: OutcomeForwarded}, []uint64{7, 5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := j.query(tc.f)
			var seqs []uint64
			for _, d := range got {
				seqs = append(seqs, d.Seq)
			}
			if fmt.Sprint(seqs) != fmt.Sprint(tc.want) {
				t.Fatalf("seqs %v, want %v", seqs, tc.want)
			}
		})
	}

	// Shrinking keeps the newest; growing keeps them all and the sequence.
	j.resize(2)
	if got := j.query(DeliveryFilter{}); len(got) != 2 || got[0].Seq != 7 || got[1].Seq != 6 {
		t.Fatalf("after shrinking: %+v", got)
	}
	j.resize(10)
	j.add(journalEntry{outcome: OutcomeQueued})
	if got := j.query(DeliveryFilter{}); len(got) != 3 || got[0].Seq != 8 || got[2].Seq != 6 {
		t.Fatalf("after growing: %+v", got)
	}
	if j.last() != 8 {
		t.Fatalf("last = %d, want 8", j.last())
	}
}

func TestJournalDeliveryIDShown(t *testing.T) {
	j := newJournal(3)
	id := randomDeliveryID(1744831201)
	j.add(journalEntry{id: id})
	j.add(journalEntry{})
	got := j.query(DeliveryFilter{})
	if got[0].DeliveryID != "" || got[1].DeliveryID != id.String() {
		t.Fatalf("delivery ids %q, %q; want \"\", %q", got[0].DeliveryID, got[1].DeliveryID, id)
	}
}

// rid is a journal entry's return id, for entries built by tests.
func rid(s string) ownedString {
	var o ownedString
	o.set(s)
	return o
}

func TestJournalFilterTest(t *testing.T) {
	j := newJournal(10)
	for i, test := range []bool{false, true, false, true} {
		j.add(journalEntry{outcome: OutcomeForwarded, returnID: rid(fmt.Sprint("r", i)), state: verify.StateComplete, status: 202, test: test})
	}
	yes, no := true, false
	tests := []struct {
		name string
		f    DeliveryFilter
		want []uint64
	}{
		{"both", DeliveryFilter{}, []uint64{4, 3, 2, 1}},
		{"only test events", DeliveryFilter{Test: &yes}, []uint64{4, 2}},
		{"no test events", DeliveryFilter{Test: &no}, []uint64{3, 1}},
		{"with another filter", DeliveryFilter{Test: &yes, ReturnID: "r1"}, []uint64{2}},
		{"and a limit", DeliveryFilter{Test: &no, Limit: 1}, []uint64{3}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var seqs []uint64
			for _, d := range j.query(tc.f) {
				seqs = append(seqs, d.Seq)
			}
			if fmt.Sprint(seqs) != fmt.Sprint(tc.want) {
				t.Fatalf("seqs %v, want %v", seqs, tc.want)
			}
		})
	}
}
