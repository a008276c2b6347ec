package alert

import (
	"os"
	"testing"
)

// BenchmarkDecode decodes the realistic payloads of testdata/, one body per
// operation, as the webhook handler does.
func BenchmarkDecode(b *testing.B) {
	for _, c := range []struct {
		name   string
		format Format
		file   string
	}{
		{"defender-single", FormatDefender, "testdata/defender-v1-single.json"},
		{"defender-array", FormatDefender, "testdata/defender-v1-array.json"},
		{"alertmanager", FormatAlertmanager, "testdata/alertmanager-firing-resolved.json"},
	} {
		body, err := os.ReadFile(c.file)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Decode(c.format, body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
