# The fallback evaluator's walker, for plain Nix 2.8 (no nix-eval-jobs).
#
# It walks a job set depth-first in attribute-name order and reports every node on
# stderr as it goes, through builtins.trace, as lines
#   trace: <mark> B <path>   before a node is forced (only with announce)
#   trace: <mark> J <job>    a job (a derivation) and its data
#   trace: <mark> T <path>   a node that failed with throw or assert (caught by tryEval)
# so that when the process dies of an error tryEval cannot catch (abort, a missing
# attribute, a type error), everything reported before is kept, and a new process
# resumes after the last node reported, with announce on: its last B names the
# attribute at fault (the caller then resumes after that one). B lines cost a trace
# per node, so only such a diagnosing run prints them.
#
#   top        the job set (hydraJobs, checks, or what a release.nix returns)
#   mark       a random marker that tells our lines from the expression's own traces
#   recurseAll recurse into every nested attribute set (flakes, like Hydra); otherwise
#              only into those with recurseForDerivations = true (legacy files)
#   resume     a path: skip every node up to and including it (depth-first order)
#   only       a path: evaluate just that node
#   catch      catch throw/assert per node (off to get the message of one that threw)
#   announce   print B before each node
#   shard, shards  take the shard-th of `shards` contiguous slices of the top-level names
{ top, mark, recurseAll, resume ? null, only ? null, catch ? true, announce ? true, shard ? 0, shards ? 1 }:
let
  inherit (builtins) attrNames isAttrs isList isString isInt tryEval length elemAt
    concatMap map listToAttrs deepSeq seq foldl' trace toJSON head tail genList;

  # Whether a set (not a derivation) at depth is recursed into.
  recurse = depth: v: depth == 0 || recurseAll || (v.recurseForDerivations or false) == true;

  try = e: if catch then tryEval e else { success = true; value = e; };

  str = v: if isString v then v else null;
  int = v: if isInt v then v else null;
  license = l:
    if isString l then [ l ]
    else if isList l then concatMap license l
    else if isAttrs l then
      (let s = l.spdxId or l.shortName or l.fullName or null; in if isString s then [ s ] else [ ])
    else [ ];
  homepage = h:
    if isString h then h
    else if isList h && h != [ ] && isString (head h) then head h
    else null;
  orNull = l: if l == [ ] then null else l;

  # Only what is set, to keep the lines short.
  dropNulls = a: builtins.removeAttrs a (builtins.filter (n: a.${n} == null) (attrNames a));
  metaOf = meta:
    let licenses = license (meta.license or null); in
    dropNulls {
      description = str (meta.description or null);
      license = orNull licenses;
      homepage = homepage (meta.homepage or null);
      timeout = int (meta.timeout or null);
      maxSilent = int (meta.maxSilent or null);
      schedulingPriority = int (meta.schedulingPriority or null);
    };
  # The job at path as one JSON object: toJSON forces all of it, so a tryEval
  # around it catches what any part throws, in one traversal. Absent parts are null
  # (most jobs have no meta, features or constituents).
  job = path: v:
    let
      meta = v.meta or null;
      f = v.requiredSystemFeatures or null;
    in toJSON {
      p = path;
      d = v.drvPath;
      n = v.name;
      s = v.system;
      o = if v ? outputs && isList v.outputs
        then listToAttrs (map (o: { name = o; value = v.${o}.outPath; }) v.outputs)
        else { out = v.outPath; };
      f = if f == null then null else if isList f then orNull f else if isString f then [ f ] else null;
      m = if meta == null || meta == { } || !(isAttrs meta) then null else orNull' (metaOf meta);
      a = if (v._hydraAggregate or false) == true then true else null;
      c = if (v._hydraAggregate or false) == true
        then map (c: if isString c then { n = c; } else { d = c.drvPath; }) v.constituents
        else null;
    };
  orNull' = s: if s == { } then null else s;

  emit = tag: payload: trace "${mark} ${tag} ${toJSON payload}" 1;

  # A node at `path` (depth = length path), its value v: a job reported as J, a set
  # recursed into, anything else skipped; a node that throws reported as T.
  node = depth: path: v:
    (if announce then seq (emit "B" path) else (x: x)) (
      let r = try (
        if !(isAttrs v) then null
        else if (v.type or null) == "derivation" then job path v
        else recurse depth v);
      in
      if !r.success then emit "T" path
      else if isString r.value then trace "${mark} J ${r.value}" 1
      else if r.value == true then children depth path v null
      else 1);

  # The children of the set v at `path`, skipping those up to and including `res`
  # (a path relative to this set).
  children = depth: path: v: res:
    let
      all = attrNames v;
      n = length all;
      lo = shard * n / shards;
      hi = (shard + 1) * n / shards;
      names = if depth == 0 && shards > 1 then genList (i: elemAt all (lo + i)) (hi - lo) else all;
      sel =
        concatMap (n:
          if n < head res then [ ]
          else if n == head res then (if length res == 1 then [ ] else [ { inherit n; r = tail res; } ])
          else [ { inherit n; r = null; } ]) names;
    in
    if res == null || res == [ ] then
      foldl' (acc: n: seq (node (depth + 1) (path ++ [ n ]) v.${n}) acc) 0 names
    else
      foldl' (acc: c: seq
        (if c.r == null then node (depth + 1) (path ++ [ c.n ]) v.${c.n}
         else children (depth + 1) (path ++ [ c.n ]) v.${c.n} c.r)
        acc) 0 sel;

  at = path: foldl' (v: n: v.${n}) top path;
in
if only != null then node (length only) only (at only)
else children 0 [ ] top resume
