package storage_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestSQL_NoStatementIsBuiltAtRunTime keeps every statement of this package constant:
// a string concatenation may only join literals and named constants (a shared column
// list, a shared condition), which the compiler joins, and no statement is formatted
// with fmt. Values (a channel, a status, a message, a table's choice) are parameters
// or separate constant statements, never spliced into SQL.
func TestSQL_NoStatementIsBuiltAtRunTime(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var parsed []*ast.File
	consts := map[string]bool{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, f)
		ast.Inspect(f, func(n ast.Node) bool {
			if d, ok := n.(*ast.GenDecl); ok && d.Tok == token.CONST {
				for _, s := range d.Specs {
					vs := s.(*ast.ValueSpec)
					for i, id := range vs.Names {
						// A string constant is written as a literal or a join.
						if i < len(vs.Values) && (isStringLiteral(vs.Values[i]) || isJoin(vs.Values[i])) {
							consts[id.Name] = true
						}
					}
				}
			}
			return true
		})
	}
	if len(parsed) == 0 {
		t.Fatal("no source files found")
	}
	sqlWord := regexp.MustCompile(`\b(SELECT|INSERT|UPDATE|DELETE|LISTEN|NOTIFY|WHERE)\b`)
	for _, f := range parsed {
		ast.Inspect(f, func(n ast.Node) bool {
			switch x := n.(type) {
			case *ast.BinaryExpr:
				if x.Op != token.ADD {
					return true
				}
				operands := flatten(x)
				if !anyString(operands, consts) {
					return true
				}
				for _, o := range operands {
					if !constantOperand(o, consts) {
						t.Errorf("%s: a string is joined with %s, which is not a constant", fset.Position(o.Pos()), exprText(o))
					}
				}
				return false
			case *ast.CallExpr:
				sel, ok := x.Fun.(*ast.SelectorExpr)
				if !ok || exprText(sel.X) != "fmt" || len(x.Args) == 0 {
					return true
				}
				if lit, ok := x.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING && sqlWord.MatchString(lit.Value) {
					t.Errorf("%s: SQL formatted with fmt.%s", fset.Position(x.Pos()), sel.Sel.Name)
				}
			}
			return true
		})
	}
}

// flatten lists the operands of a chain of +.
func flatten(e ast.Expr) []ast.Expr {
	switch x := e.(type) {
	case *ast.BinaryExpr:
		if x.Op == token.ADD {
			return append(flatten(x.X), flatten(x.Y)...)
		}
	case *ast.ParenExpr:
		return flatten(x.X)
	}
	return []ast.Expr{e}
}

func isStringLiteral(e ast.Expr) bool {
	lit, ok := e.(*ast.BasicLit)
	return ok && lit.Kind == token.STRING
}

func isJoin(e ast.Expr) bool {
	b, ok := e.(*ast.BinaryExpr)
	return ok && b.Op == token.ADD
}

// anyString says whether a chain of + joins strings: one operand is a string
// literal or a string constant.
func anyString(es []ast.Expr, consts map[string]bool) bool {
	for _, e := range es {
		if id, ok := e.(*ast.Ident); isStringLiteral(e) || ok && consts[id.Name] {
			return true
		}
	}
	return false
}

func constantOperand(e ast.Expr, consts map[string]bool) bool {
	if id, ok := e.(*ast.Ident); ok {
		return consts[id.Name]
	}
	return isStringLiteral(e)
}

func exprText(e ast.Expr) string {
	switch x := e.(type) {
	case *ast.Ident:
		return x.Name
	case *ast.SelectorExpr:
		return exprText(x.X) + "." + x.Sel.Name
	case *ast.CallExpr:
		return exprText(x.Fun) + "(…)"
	}
	return "an expression"
}
