package devices

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// appendRun builds a chunk point by point as the writer does, driven by
// ops (one point each) and seed, and at each write checks that the
// appenders of the whole chunk and of its tail return the bytes the full
// encoder makes of the same points. The appenders may have been used
// before.
func appendRun(t testing.TB, seed uint64, ops []byte, whole, tail *chunkAppender) {
	rng := rand.New(rand.NewPCG(seed, 2))
	c := &chunkData{}
	idx := map[string]int{}
	var e, full encoder
	whole.reset(0)
	tail.reset(0)
	based := 0
	ts, walk, count := int64(1795662000000), 21.5, 1000.0
	set := func(i int, name string, v float64) {
		col := c.col(name, idx)
		if col.nums == nil { // as the writer's chunks: no numbers yet
			col.nums = c.numsFor(col)
		}
		col.syms[i], col.nums[i] = symNumber, v
	}
	check := func() {
		t.Helper()
		n := len(c.ts)
		if n == 0 {
			return
		}
		want := full.chunk(nil, c)
		if got := whole.chunk(&e, nil, c); !bytes.Equal(got, want) {
			t.Fatalf("whole chunk of %d points: appender's %d bytes differ from the encoder's %d", n, len(got), len(want))
		}
		if based < n {
			want := full.chunk(nil, c.slice(based, n))
			got := tail.chunk(&e, nil, c)
			if !bytes.Equal(got, want) {
				t.Fatalf("tail [%d, %d): appender's %d bytes differ from the encoder's %d", based, n, len(got), len(want))
			}
			d, err := decodeChunk(got, nil)
			if err != nil {
				t.Fatal(err)
			}
			sameChunk(t, c.slice(based, n), d)
		}
	}
	for _, op := range ops {
		if len(c.ts) >= chunkPoints {
			break
		}
		switch op & 3 {
		case 0:
			ts += 1000
		case 1:
			ts += 1000 + rng.Int64N(201) - 100
		case 2:
			ts += rng.Int64N(1 << 40)
		}
		i := len(c.ts)
		c.ts = append(c.ts, ts)
		for j := range c.cols {
			c.cols[j].syms = append(c.cols[j].syms, symAbsent)
			if c.cols[j].nums != nil {
				c.cols[j].nums = append(c.cols[j].nums, 0)
			}
		}
		switch op >> 2 & 7 {
		case 0, 1:
			walk = math.Round((walk+rng.Float64()-0.5)*100) / 100
			set(i, "a", walk)
		case 2:
			set(i, "a", float64(rng.Int64N(1000)))
		case 3:
			set(i, "a", rng.Float64()*1e6)
		case 4:
			set(i, "a", math.Round(rng.Float64()*1e12)/1e11) // 11 decimals
		case 5:
			set(i, "a", math.Round(rng.Float64()*1e5)/1e3)
		case 6:
			c.col("a", idx).setDict(i, []byte(`"s`+string(rune('a'+rng.IntN(3)))+`"`))
		}
		switch op >> 5 & 3 {
		case 0:
			count = math.Round((count+0.0017)*10000) / 10000
			set(i, "b", count)
		case 1:
			c.col("b", idx).setDict(i, []byte([]string{"true", "false"}[rng.IntN(2)]))
		case 2:
			set(i, "c"+string(rune('0'+rng.IntN(3))), float64(rng.IntN(5)))
		}
		if op>>7 == 1 {
			check()
			if rng.IntN(3) == 0 {
				based = len(c.ts)
				tail.reset(based)
			}
		}
	}
	check()
}

func TestChunkAppender(t *testing.T) {
	whole, tail := newChunkAppender(0), newChunkAppender(0)
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 3))
		ops := make([]byte, 1+rng.IntN(chunkPoints))
		mask := byte(rng.Uint32()) | 0x80
		for i := range ops {
			ops[i] = byte(rng.Uint32()) & mask
			if rng.IntN(10) > 0 {
				ops[i] &^= 0x80 // writes every 10 points or so
			}
			if seed%4 == 0 {
				ops[i] &^= 0x7c // one column of decimals
			}
		}
		appendRun(t, seed, ops, whole, tail)
	}
}

// FuzzChunkAppender: the appender returns the full encoder's bytes.
//
//	go test -run XXX -fuzz FuzzChunkAppender ./devices/
func FuzzChunkAppender(f *testing.F) {
	f.Add(uint64(1), []byte{0, 0, 0x80, 0x81, 4, 8, 0x8c, 0x90, 0x14, 0x98, 0x20, 0xa0, 0x40, 0xc0})
	f.Fuzz(func(t *testing.T, seed uint64, ops []byte) {
		appendRun(t, seed, ops, newChunkAppender(0), newChunkAppender(0))
	})
}

// BenchmarkChunkEncodeWrites: the encoding a device's chunk costs the
// writer, per point, when it gets per points a write (the base and
// tail rows by writeChunks's rule of half, without wholeEvery, by
// which the writer now rewrites the base while a chunk has up to 80
// points at 10 a write, and at every write of 130), by the full
// encoder and by the appenders.
//
//	go test -run XXX -bench ChunkEncodeWrites ./devices/
func BenchmarkChunkEncodeWrites(b *testing.B) {
	if testPG != nil {
		b.Skip("no database involved")
	}
	c := testChunk(640, 7)
	c.cols = c.cols[:4] // temperature, energy, raw, heating
	c.cols[2].name = "humidity"
	for i := range c.cols[2].nums {
		c.cols[2].nums[i] = float64(40 + i%7)
	}
	for _, per := range []int{1, 10, 130} {
		for _, appender := range []bool{false, true} {
			b.Run(fmt.Sprintf("per=%d/appender=%v", per, appender), func(b *testing.B) {
				var e encoder
				var buf []byte
				points := 0
				var s spareArrays // as the writer recycles them
				for b.Loop() {
					based := 0
					var whole, tail *chunkAppender
					for n := min(per, len(c.ts)); ; n = min(n+per, len(c.ts)) {
						d := c.slice(0, n)
						if based > 0 && n-based <= based/2 {
							if appender {
								if tail == nil {
									tail = s.appender(based)
								}
								buf = tail.chunk(&e, buf[:0], d)
							} else {
								buf = e.chunk(buf[:0], d.slice(based, n))
							}
						} else {
							based = n
							if appender {
								if whole == nil {
									whole = s.appender(0)
								}
								buf = whole.chunk(&e, buf[:0], d)
								if tail != nil {
									tail.reset(n)
								}
							} else {
								buf = e.chunk(buf[:0], d)
							}
						}
						if n == len(c.ts) {
							break
						}
					}
					points += len(c.ts)
					s.keepAppender(whole)
					s.keepAppender(tail)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(points), "ns/point")
			})
		}
	}
}

// TestTelemetryChunksWrittenOften: points written a few at a time, so
// that each device's chunk is rewritten (base and tail, each from its
// kept encoding) hundreds of times, are read back as they were sent:
// decimals whose precision rises, numbers without a short decimal form,
// strings and booleans, a metric that appears late.
func TestTelemetryChunksWrittenOften(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t, "w1", "w2")
	tel := openTestTelemetry(t, db, &TelemetryOptions{FlushInterval: time.Hour})
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const n = 1200
	val := func(dev, i int) string {
		switch {
		case i%41 == 40:
			return fmt.Sprintf(`{"t":%d.125,"raw":%v}`, i%30, float64(i)/3)
		case i%17 == 0:
			return fmt.Sprintf(`{"t":%d.5,"mode":"m%d","on":%v}`, i%30, i%3, i%2 == 0)
		case dev == 1 && i > n/2:
			return fmt.Sprintf(`{"t":%d.5,"late":%d}`, i%30, i)
		}
		return fmt.Sprintf(`{"t":%d.5,"h":%d}`, i%30, i%7)
	}
	for i := 0; i < n; {
		for end := min(n, i+1+i%7); i < end; i++ {
			for dev := range 2 {
				s := mustSample(t, val(dev, i))
				s.TS = base.Add(time.Duration(i)*time.Second + time.Duration(i%3)*time.Millisecond)
				if !tel.Add(fmt.Sprintf("w%d", dev+1), s, time.Now()) {
					t.Fatal("Add refused")
				}
			}
		}
		if err := tel.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for dev := range 2 {
		pts, err := tel.Points(ctx, fmt.Sprintf("w%d", dev+1), base, base.Add(n*time.Second), 10000)
		if err != nil {
			t.Fatal(err)
		}
		if len(pts) != n {
			t.Fatalf("w%d: %d points, want %d", dev+1, len(pts), n)
		}
		for i, p := range pts {
			want := mustSample(t, val(dev, i)).Values()
			ts := base.Add(time.Duration(i)*time.Second + time.Duration(i%3)*time.Millisecond)
			if !p.TS.Equal(ts) || fmt.Sprint(p.Values) != fmt.Sprint(want) {
				t.Fatalf("w%d point %d: %v %v, want %v %v", dev+1, i, p.TS, p.Values, ts, want)
			}
		}
	}
}
