package rereadyverify

import (
	"errors"
	"io"
	"math/bits"
	"sync"
)

// Request bodies are read into pooled buffers whose sizes step by at most
// 1.5x (1, 1.5, 2, 3, 4, 6 KiB, ...), so a buffer is never more than half
// again the body it holds. A buffer goes back to its pool only once the
// handler chain, including the upstream round trip, is done with it.

const (
	minBufShift = 10 // 1 KiB
	maxBufShift = 26 // 64 MiB; bigger buffers are not pooled
)

// bufPools[2*k] holds buffers of 1<<(k+minBufShift) bytes and bufPools[2*k+1]
// buffers of 1.5 times that.
var bufPools [2 * (maxBufShift - minBufShift + 1)]sync.Pool

// bufClass returns the pool index and the size of the smallest class that
// holds n bytes; ok is false past the largest pooled class.
func bufClass(n int) (idx, size int, ok bool) {
	if n <= 1<<minBufShift {
		return 0, 1 << minBufShift, true
	}
	k := bits.Len(uint(n-1)) - 1 // 1<<k < n <= 1<<(k+1)
	if k+1 > maxBufShift {
		return 0, n, false
	}
	if mid := 3 << (k - 1); n <= mid {
		return 2*(k-minBufShift) + 1, mid, true
	}
	return 2 * (k + 1 - minBufShift), 1 << (k + 1), true
}

// getBuf returns an empty buffer that holds at least n bytes. The pointer
// itself is what the pool keeps, so a round trip through it allocates
// nothing.
func getBuf(n int) *[]byte {
	idx, size, ok := bufClass(n)
	if ok {
		if b, _ := bufPools[idx].Get().(*[]byte); b != nil {
			*b = (*b)[:0]
			return b
		}
	}
	b := make([]byte, 0, size)
	return &b
}

func putBuf(b *[]byte) {
	idx, size, ok := bufClass(cap(*b))
	if !ok || size != cap(*b) {
		return
	}
	*b = (*b)[:0]
	bufPools[idx].Put(b)
}

var errTooLarge = errors.New("body too large")

// maxUpfront bounds the buffer reserved from a declared Content-Length.
const maxUpfront = 1 << 20

// readBody reads r to EOF into a pooled buffer. hint is the declared length
// (-1 if unknown). It fails with errTooLarge as soon as more than limit bytes
// arrive; on any error the buffer has already been returned to the pool.
func readBody(r io.Reader, hint, limit int64) (*[]byte, error) {
	// A declared length sizes the buffer, but only up to maxUpfront: a
	// client that declares a big body and sends nothing must not make the
	// gateway reserve it before a byte of proof arrives. Beyond that the
	// buffer grows as data does.
	first := int64(4 << 10)
	if hint >= 0 {
		first = min(max(hint, 1), maxUpfront)
	}
	p := getBuf(int(min(first, limit+1)))
	b := *p
	for {
		if len(b) == cap(b) {
			// Full: probe for EOF before growing, so a body that exactly
			// fills its buffer (the usual case with Content-Length) needs
			// no bigger one.
			var probe [1]byte
			n, err := io.ReadFull(r, probe[:])
			if n == 0 {
				*p = b
				if err == io.EOF {
					return p, nil
				}
				putBuf(p)
				return nil, err
			}
			if int64(len(b)) >= limit {
				putBuf(p)
				return nil, errTooLarge
			}
			np := getBuf(int(min(int64(cap(b))*2, limit+1)))
			nb := append(append(*np, b...), probe[0])
			putBuf(p)
			p, b = np, nb
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if int64(len(b)) > limit {
			putBuf(p)
			return nil, errTooLarge
		}
		if err == io.EOF {
			*p = b
			return p, nil
		}
		if err != nil {
			putBuf(p)
			return nil, err
		}
	}
}

// bodyReader hands the buffered body to the rest of the chain. Once the
// handler detaches it, reads fail, so a transport goroutine that outlives
// the request can never see a recycled buffer.
type bodyReader struct {
	mu  sync.Mutex
	ref *[]byte // the pooled buffer; nil once detached
	buf []byte  // *ref
	off int
}

func newBodyReader(ref *[]byte) bodyReader { return bodyReader{ref: ref, buf: *ref} }

func (br *bodyReader) Read(p []byte) (int, error) {
	br.mu.Lock()
	defer br.mu.Unlock()
	if br.ref == nil {
		return 0, io.ErrClosedPipe
	}
	if br.off >= len(br.buf) {
		return 0, io.EOF
	}
	n := copy(p, br.buf[br.off:])
	br.off += n
	return n, nil
}

func (br *bodyReader) Close() error { return nil }

// rewind makes the body readable again from its start.
func (br *bodyReader) rewind() {
	br.mu.Lock()
	br.off = 0
	br.mu.Unlock()
}

// detach stops all further reads and returns the buffer to its pool.
func (br *bodyReader) detach() {
	br.mu.Lock()
	ref := br.ref
	br.ref, br.buf = nil, nil
	br.mu.Unlock()
	if ref != nil {
		putBuf(ref)
	}
}
