package wspool_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestHandlerErrorDocNamesEveryCallback: every name the library reports in
// HandlerError.Callback is listed in HandlerError's doc, so the list cannot
// drift from the code again (it had missed six).
func TestHandlerErrorDocNamesEveryCallback(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var doc string
	names := map[string]string{} // name -> where
	reporters := regexp.MustCompile(`^(recoverCallback|panicked|reportPanic)$`)
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.GenDecl:
				for _, s := range n.Specs {
					if ts, ok := s.(*ast.TypeSpec); ok && ts.Name.Name == "HandlerError" {
						doc = n.Doc.Text()
					}
				}
			case *ast.CallExpr: // c.recoverCallback("x"), c.panicked("x", r), c.reportPanic("x", r)
				if sel, ok := n.Fun.(*ast.SelectorExpr); ok && reporters.MatchString(sel.Sel.Name) && len(n.Args) > 0 {
					if lit, ok := n.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						s, _ := strconv.Unquote(lit.Value)
						names[s] = fset.Position(lit.Pos()).String()
					}
				}
			case *ast.KeyValueExpr: // &HandlerError{Callback: "x", ...}
				if id, ok := n.Key.(*ast.Ident); ok && id.Name == "Callback" {
					if lit, ok := n.Value.(*ast.BasicLit); ok && lit.Kind == token.STRING {
						s, _ := strconv.Unquote(lit.Value)
						names[s] = fset.Position(lit.Pos()).String()
					}
				}
			}
			return true
		})
	}
	if doc == "" {
		t.Fatal("HandlerError's doc not found")
	}
	if len(names) < 10 {
		t.Fatalf("found only %d callback names (%v): the test no longer sees how they are reported", len(names), names)
	}
	flat := strings.Join(strings.Fields(doc), " ")
	for name, where := range names {
		if name != "" && !strings.Contains(flat, strconv.Quote(name)) {
			t.Errorf("callback %q (%s) is not in HandlerError's doc", name, where)
		}
	}
}
