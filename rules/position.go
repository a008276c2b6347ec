package rules

import (
	"strings"
	"unicode/utf8"

	"github.com/responder-dev/responder/internal/yamlx"
)

// scalarMap maps each rune of a decoded YAML scalar back to its position in
// the file, so that an error inside a `when` expression or a `comment`
// template points at the right line and column of the YAML file.
//
// It walks the raw text from the scalar's token and matches it rune by rune
// against the decoded value: quotes, escapes, block headers, indentation and
// folded line breaks are stepped over. If the raw text cannot be matched (it
// should always match), every offset maps to the scalar's start.
type scalarMap struct {
	start yamlx.Position
	pos   []yamlx.Position // one per rune of the value, then the end
}

func (m scalarMap) at(offset int) yamlx.Position {
	if offset < 0 || len(m.pos) == 0 {
		return m.start
	}
	if offset >= len(m.pos) {
		return m.pos[len(m.pos)-1]
	}
	return m.pos[offset]
}

// rawCursor reads the file's runes from a line and column on, with '\n'
// between lines. Lines and columns are 0-based inside, 1-based outside.
type rawCursor struct {
	lines [][]rune
	l, c  int
}

func (r *rawCursor) peekAt(k int) (rune, bool) {
	l, c := r.l, r.c
	for ; k > 0; k-- {
		if l >= len(r.lines) {
			return 0, false
		}
		if c < len(r.lines[l]) {
			c++
		} else {
			l, c = l+1, 0
		}
	}
	if l >= len(r.lines) {
		return 0, false
	}
	if c < len(r.lines[l]) {
		return r.lines[l][c], true
	}
	if l+1 < len(r.lines) {
		return '\n', true
	}
	return 0, false
}

func (r *rawCursor) peek() (rune, bool) { return r.peekAt(0) }

func (r *rawCursor) advance(n int) {
	for ; n > 0 && r.l < len(r.lines); n-- {
		if r.c < len(r.lines[r.l]) {
			r.c++
		} else {
			r.l, r.c = r.l+1, 0
		}
	}
}

func (r *rawCursor) position(file string) yamlx.Position {
	return yamlx.Position{File: file, Line: r.l + 1, Col: r.c + 1}
}

func isSpace(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }

func splitLines(src []byte) [][]rune {
	text := strings.ReplaceAll(string(src), "\r\n", "\n")
	parts := strings.Split(text, "\n")
	lines := make([][]rune, len(parts))
	for i, p := range parts {
		lines[i] = []rune(p)
	}
	return lines
}

// mapScalar builds the map of value, a scalar decoded from the token at start.
func mapScalar(lines [][]rune, start yamlx.Position, value string) scalarMap {
	m := scalarMap{start: start}
	l, c := start.Line-1, start.Col-1
	if l < 0 || l >= len(lines) || c < 0 || c >= len(lines[l]) {
		return m
	}
	cur := &rawCursor{lines: lines, l: l, c: c}
	style := lines[l][c]
	switch style {
	case '|', '>':
		// The content starts on the line after the block header.
		cur.l, cur.c = l+1, 0
	case '\'', '"':
		cur.c++
	default:
		style = 0
	}
	pos := make([]yamlx.Position, 0, utf8.RuneCountInString(value)+1)
	for _, v := range value {
		for {
			r, ok := cur.peek()
			if !ok {
				return m
			}
			if style == '"' && r == '\\' {
				next, _ := cur.peekAt(1)
				if next == '\n' {
					// An escaped line break joins the lines.
					cur.advance(2)
					continue
				}
				pos = append(pos, cur.position(start.File))
				n := 2
				switch next {
				case 'x':
					n = 4
				case 'u':
					n = 6
				case 'U':
					n = 10
				}
				cur.advance(n)
				break
			}
			if style == '\'' && r == '\'' {
				if next, _ := cur.peekAt(1); next == '\'' {
					pos = append(pos, cur.position(start.File))
					cur.advance(2)
					break
				}
			}
			if r == v || isSpace(r) && isSpace(v) {
				pos = append(pos, cur.position(start.File))
				cur.advance(1)
				break
			}
			if isSpace(r) {
				// Indentation, or whitespace folded away.
				cur.advance(1)
				continue
			}
			return m
		}
	}
	pos = append(pos, cur.position(start.File))
	m.pos = pos
	return m
}

// runeOffset converts a 1-based line and a 0-based byte column within that
// line of text into a rune offset of text.
func runeOffset(text string, line, byteCol int) int {
	start := 0
	for i := 1; i < line; i++ {
		j := strings.IndexByte(text[start:], '\n')
		if j < 0 {
			return utf8.RuneCountInString(text)
		}
		start += j + 1
	}
	end := start + max(byteCol, 0)
	if nl := strings.IndexByte(text[start:], '\n'); nl >= 0 && end > start+nl {
		end = start + nl
	}
	end = min(end, len(text))
	return utf8.RuneCountInString(text[:end])
}
