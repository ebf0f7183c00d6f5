package devices

import (
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
)

// testChunk makes a chunk of n points with a decimal random walk, a
// counter, a float without a short decimal form, a boolean that changes
// now and then, a sparse string and a metric that appears halfway.
func testChunk(n int, seed uint64) *chunkData {
	rng := rand.New(rand.NewPCG(seed, 1))
	c := &chunkData{}
	idx := map[string]int{}
	t, temp, count := int64(1795662000000), 21.5, 1000.0
	for i := range n {
		t += 10000 + rng.Int64N(2001) - 1000
		c.ts = append(c.ts, t)
		for j := range c.cols {
			c.cols[j].syms = append(c.cols[j].syms, symAbsent)
			if c.cols[j].nums != nil {
				c.cols[j].nums = append(c.cols[j].nums, 0)
			}
		}
		temp = math.Round((temp+rng.Float64()*0.6-0.3)*100) / 100
		count = math.Round((count+0.0017)*10000) / 10000
		set := func(name string, v float64) {
			col := c.col(name, idx)
			if col.nums == nil { // as the writer's chunks: no numbers yet
				col.nums = c.numsFor(col)
			}
			col.syms[i], col.nums[i] = symNumber, v
		}
		set("temperature", temp)
		set("energy_kwh", count)
		set("raw", rng.Float64()*1e6)
		c.col("heating", idx).setDict(i, []byte([]string{"true", "false"}[i/50%2]))
		if i%7 == 0 {
			c.col("fw", idx).setDict(i, []byte(`"1.2.3"`))
		}
		if i >= n/2 {
			set("late", float64(i))
		}
	}
	return c
}

func sameChunk(t testing.TB, a, b *chunkData) {
	t.Helper()
	if !slices.Equal(a.ts, b.ts) || len(a.cols) != len(b.cols) {
		t.Fatalf("timestamps or columns differ: %d/%d points, %d/%d columns", len(a.ts), len(b.ts), len(a.cols), len(b.cols))
	}
	for i := range a.cols {
		x, y := &a.cols[i], &b.cols[i]
		if x.name != y.name || !slices.Equal(x.syms, y.syms) || !slices.Equal(x.dict, y.dict) {
			t.Fatalf("column %q: symbols or dictionary differ", x.name)
		}
		for j, s := range x.syms {
			if s == symNumber && math.Float64bits(x.nums[j]) != math.Float64bits(y.nums[j]) {
				t.Fatalf("column %q point %d: %v != %v", x.name, j, x.nums[j], y.nums[j])
			}
		}
	}
}

func TestTelemetryChunkRoundTrip(t *testing.T) {
	for _, n := range []int{1, 2, 3, 100, chunkPoints} {
		c := testChunk(n, uint64(n))
		b := encodeChunk(nil, c)
		got, err := decodeChunk(b, nil)
		if err != nil {
			t.Fatalf("%d points: %v", n, err)
		}
		sameChunk(t, c, got)
		one, err := decodeChunk(b, func(name string) bool { return name == "temperature" })
		if err != nil || len(one.cols) != 1 || one.cols[0].name != "temperature" || !slices.Equal(one.cols[0].nums, c.cols[0].nums) {
			t.Fatalf("%d points: one column: %v", n, err)
		}
	}
	// Edge numbers go through the XOR encoding unchanged.
	c := &chunkData{ts: []int64{-5, 0, 1 << 62}, cols: []chunkCol{{name: "x",
		syms: []uint32{symNumber, symNumber, symNumber},
		nums: []float64{math.Copysign(0, -1), math.MaxFloat64, math.SmallestNonzeroFloat64}}}}
	got, err := decodeChunk(encodeChunk(nil, c), nil)
	if err != nil {
		t.Fatal(err)
	}
	sameChunk(t, c, got)
}

// TestTelemetryChunkSize: decimals from a sensor cost a byte or two each.
func TestTelemetryChunkSize(t *testing.T) {
	c := testChunk(chunkPoints, 3)
	// Without the random float column.
	c.cols = slices.DeleteFunc(c.cols, func(col chunkCol) bool { return col.name == "raw" })
	b := encodeChunk(nil, c)
	values := 0
	for _, col := range c.cols {
		for _, s := range col.syms {
			if s != symAbsent {
				values++
			}
		}
	}
	if per := float64(len(b)) / float64(values); per > 1.5 {
		t.Errorf("%d bytes for %d values: %.2f bytes a value", len(b), values, per)
	}
}

func TestTelemetryChunkCorrupt(t *testing.T) {
	b := encodeChunk(nil, testChunk(50, 1))
	for i := range len(b) - 1 {
		if _, err := decodeChunk(b[:i], nil); err == nil {
			t.Fatalf("truncated to %d bytes: decoded", i)
		}
	}
	if _, err := decodeChunk(append(b, 0), nil); err == nil {
		t.Fatal("trailing byte: decoded")
	}
}

// FuzzTelemetryChunk: no input makes the decoder panic or allocate much,
// and what decodes encodes to the same again.
//
//	go test -run XXX -fuzz FuzzTelemetryChunk ./devices/
func FuzzTelemetryChunk(f *testing.F) {
	for _, n := range []int{1, 2, 10, 300} {
		f.Add(encodeChunk(nil, testChunk(n, uint64(n))))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeChunk(b, nil)
		if err != nil {
			return
		}
		again, err := decodeChunk(encodeChunk(nil, c), nil)
		if err != nil {
			t.Fatalf("re-encoded chunk does not decode: %v", err)
		}
		sameChunk(t, c, again)
	})
}

// TestTelemetryChunkVersion1: a chunk written by the encoder of version 1
// (before the Rice codes; testdata/chunk_v1.bin holds testChunk(300, 19)
// with a column "count" of i², as that encoder wrote it: its columns
// take the XOR, delta and delta-of-delta encodings) decodes to the same
// points, and encodes smaller as version 2.
func TestTelemetryChunkVersion1(t *testing.T) {
	b, err := os.ReadFile("testdata/chunk_v1.bin")
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != 1 {
		t.Fatalf("version %d", b[0])
	}
	want := testChunk(300, 19)
	idx := map[string]int{}
	for i, col := range want.cols {
		idx[col.name] = i
	}
	cnt := want.col("count", idx)
	cnt.nums = want.numsFor(cnt)
	for i := range want.ts {
		cnt.syms[i], cnt.nums[i] = symNumber, float64(i*i)
	}
	got, err := decodeChunk(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	sameChunk(t, want, got)
	v2 := encodeChunk(nil, got)
	if v2[0] != chunkVersion || len(v2) >= len(b) {
		t.Errorf("version %d: %d bytes, version 1 %d", v2[0], len(v2), len(b))
	}
}

// TestTelemetryChunkRice: noisy decimals and jittered timestamps take the
// Rice codes, and their outliers (a gap, a jump) come back exactly;
// decimals spread evenly over a range take their offsets.
func TestTelemetryChunkRice(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	c := &chunkData{cols: []chunkCol{{name: "lat"}, {name: "speed"}}}
	col, speed := &c.cols[0], &c.cols[1]
	ts, lat := int64(1795662000000), 52.52
	for i := range 500 {
		speed.syms = append(speed.syms, symNumber)
		speed.nums = append(speed.nums, float64(280+rng.IntN(241))/10)
		ts += 13500 + rng.Int64N(3000)
		lat = math.Round((lat+rng.NormFloat64()*0.001)*1e6) / 1e6
		v := lat
		switch i {
		case 100:
			ts += 3_600_000 // an hour offline
		case 200:
			v = -1e9 // a jump
		case 201:
			v = 1e8
		}
		c.ts = append(c.ts, ts)
		col.syms = append(col.syms, symNumber)
		col.nums = append(col.nums, v)
	}
	b := encodeChunk(nil, c)
	got, err := decodeChunk(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	sameChunk(t, c, got)
	var e encoder
	if body := e.col(nil, &c.cols[0]); body[len(body)-len(e.bits)-2] != numDecDeltaRice {
		t.Errorf("lat: mode %d, want Rice-coded deltas", body[len(body)-len(e.bits)-2])
	}
	// Speeds spread evenly over 28–52 km/h: 8 bits each, as offsets.
	if body := e.col(nil, &c.cols[1]); body[len(body)-len(e.bits)-2] != numDecRange || len(e.bits) != (64+6+500*8+7)/8 {
		t.Errorf("speed: mode %d, %d bytes, want offsets of 8 bits", body[len(body)-len(e.bits)-2], len(e.bits))
	}
	cr := chunkReader{b: b[1:]}
	cr.uvarint() // points
	for range cr.uvarint() {
		cr.bytes() // names
	}
	r := bitReader{b: cr.bytes()}
	if _, err := r.bits(64); err != nil {
		t.Fatal(err)
	}
	if code, _ := r.bits(1); code != codeRice {
		t.Errorf("timestamps: code %d, want Rice", code)
	}
	// About 12.5 bits a timestamp, 12.5 a latitude and 8 a speed.
	if per := float64(len(b)) / 500; per > 4.3 {
		t.Errorf("%d bytes: %.2f a point", len(b), per)
	}
}

// TestRiceCostHist: riceCostHist's sums by prefix are riceHalves summed
// value by value, and for noise (normal or Laplace, of any scale, with
// outliers) its k is as good as the best of all.
func TestRiceCostHist(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	for i := range 2000 {
		var hist intHist
		scale := math.Pow(2, rng.Float64()*40)
		for range 50 + rng.IntN(500) {
			v := rng.NormFloat64() * scale
			if i%2 == 1 {
				v = rng.ExpFloat64() * scale * float64(1-2*rng.IntN(2))
			}
			if rng.IntN(50) == 0 {
				v *= 1000
			}
			hist[intLen(int64(math.Max(-1e18, math.Min(1e18, v))))]++
		}
		got, k := riceCostHist(&hist)
		best := -1
		for kk := range 64 {
			cost := 12
			for l, n := range hist {
				cost += int(n) * riceHalves(l, kk)
			}
			if kk == k && cost != got {
				t.Fatalf("k %d: %d half bits, summed %d (%v)", k, got, cost, hist)
			}
			if best < 0 || cost < best {
				best = cost
			}
		}
		if got > best+best/50 {
			t.Errorf("%d half bits, the best k takes %d (%v)", got, best, hist)
		}
	}
}

// TestBitWriterBytes: the bit writer, which gathers bits into 64-bit
// words, writes the bytes of the plainest writer (one bit at a time),
// for widths 0 to 64, whatever it has gathered, and appendTo and size
// agree with done at every step.
func TestBitWriterBytes(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 3))
	for run := range 200 {
		var w bitWriter
		var want []byte
		nbits := 0
		for range rng.IntN(300) {
			n := rng.IntN(65)
			v := rng.Uint64() // bits above n must be ignored
			w.bits(v, n)
			for k := n - 1; k >= 0; k-- {
				if nbits%8 == 0 {
					want = append(want, 0)
				}
				if v>>k&1 == 1 {
					want[nbits/8] |= 0x80 >> (nbits % 8)
				}
				nbits++
			}
			if got := w.appendTo([]byte{0xAA}); !slices.Equal(got[1:], want) || got[0] != 0xAA {
				t.Fatalf("run %d: appendTo after %d bits: %x, want %x", run, nbits, got[1:], want)
			}
			if w.size() != len(want) {
				t.Fatalf("run %d: size %d after %d bits, want %d", run, w.size(), nbits, len(want))
			}
		}
		if got := w.done(); !slices.Equal(got, want) {
			t.Fatalf("run %d: done %x, want %x", run, got, want)
		}
	}
}
