"""Planning: everything the generated kernel does, decided before it is generated.

Modules, each one job; each imports only modules listed before it (tests/test_search_imports.py
checks that there is no cycle):
  errors        PlanError, CalibrationError
  plan          the Plan (tilings, attention splits, ring, schedule, kernel features), its sizes,
                plan.json (to_json) and hash
  kernel_rules  one rule per kernel feature (Plan.batched, bulk_ring, kv_ring, ..., attn_polled)
  shapes        the linear stages' shapes, which tilings the kernel takes
  deps, dag     the dependency rule the kernel implements; the step's task graph
  cost          the cost model and the fixed-schedule simulator; its constants per GPU (built in,
                or fitted to a card: calibration/<GPU>.json)
  scheduling    list scheduling: the static task-to-SM order
  smem          the shared-memory model, per stage
  baseline      the round-robin plan
  search        the offline search (Searcher, search_plan, search_plans)
  ksplit_claim  the paper's K-split claim, checked in the cost model
  validate      refuses a plan the kernel would run wrongly or hang on
  planner       make_plan: the validated plan adamk-gen compiles
  layout        where weights, scratch, counters and the KV cache live in device memory
  device_memory  what the plan's buffers take, against the GPU's memory
  profile, chain, explain  measured task times, a layer's measured chain; adamk-gen --explain
  calibrate     a card's cost constants fitted to profiled steps (adamk-tune --calibrate)
"""
