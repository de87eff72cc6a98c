package wspool_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestEveryOptionIsInOptionsGo: every With… option (a function returning
// Option or PoolOption) is declared in options.go, where DESIGN.md says a
// reader finds every option and its validation; eighteen had drifted into
// their features' files.
func TestEveryOptionIsInOptionsGo(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	found := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || !strings.HasPrefix(fn.Name.Name, "With") || fn.Type.Results == nil || len(fn.Type.Results.List) != 1 {
				continue
			}
			if id, ok := fn.Type.Results.List[0].Type.(*ast.Ident); !ok || (id.Name != "Option" && id.Name != "PoolOption") {
				continue
			}
			found++
			if name != "options.go" {
				t.Errorf("%s is declared in %s, not options.go", fn.Name.Name, fset.Position(fn.Pos()))
			}
		}
	}
	if found < 40 {
		t.Fatalf("found only %d options: the test no longer sees them", found)
	}
}
