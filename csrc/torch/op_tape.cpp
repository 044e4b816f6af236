// OpTape: the ops one forward called, in order, replayed from C++ (sparse_rt/capture.py records them).
// Between two ops of an eager forward runs Python: the module calls, the fused functions' checks, the
// view ops' wrappers. On a 2-core CPU that is milliseconds per BERT-base forward at batch 1, the
// other core waiting meanwhile. A replay calls the same ops through the dispatcher, each argument
// taken from where the recording saw it: a forward input, an earlier op's output (a slot) or a
// constant (a weight, a packing, a shape).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <string>
#include <utility>
#include <vector>

namespace sparse_rt {
namespace {

// Where one argument of a step comes from. A list argument whose elements come from slots (the
// tensors of torch.cat, say) is rebuilt on every run: `elements` holds its constants, `element_slots`
// the slot of each element or -1.
struct Argument {
  enum class Kind { kConstant, kSlot, kList } kind;
  c10::IValue constant;
  int64_t slot = -1;
  std::vector<c10::IValue> elements;
  std::vector<int64_t> element_slots;
  bool optional_elements = false;  // Tensor?[] rather than Tensor[]
};

struct Step {
  c10::OperatorHandle op;
  std::vector<Argument> arguments;
  std::vector<int64_t> outputs;   // a slot per returned tensor, lists flattened
  std::vector<int64_t> released;  // slots read for the last time here: freed after the step
};

bool is_tensor_list(const c10::TypePtr& type, bool* optional_elements) {
  const auto list = type->cast<c10::ListType>();
  if (!list) return false;
  const c10::TypePtr element = list->getElementType();
  if (element->kind() == c10::TypeKind::TensorType) {
    *optional_elements = false;
    return true;
  }
  const auto optional = element->cast<c10::OptionalType>();
  if (optional && optional->getElementType()->kind() == c10::TypeKind::TensorType) {
    *optional_elements = true;
    return true;
  }
  return false;
}

// The list the op's boxed kernel unboxes for a Tensor[] or Tensor?[] argument (Python hands over a
// generic list, its element type inferred from the values).
c10::IValue tensor_list(const std::vector<c10::IValue>& values, bool optional_elements) {
  if (optional_elements) {
    c10::List<std::optional<at::Tensor>> list;
    list.reserve(values.size());
    for (const c10::IValue& v : values) list.push_back(v.isNone() ? std::nullopt : std::optional(v.toTensor()));
    return list;
  }
  c10::List<at::Tensor> list;
  list.reserve(values.size());
  for (const c10::IValue& v : values) list.push_back(v.toTensor());
  return list;
}

class OpTape : public torch::CustomClassHolder {
 public:
  explicit OpTape(int64_t inputs) : inputs_(inputs), slots_(inputs) {
    TORCH_CHECK(inputs >= 0, "OpTape: inputs must be >= 0, got ", inputs);
  }

  // Starts a step calling the op `name` ("namespace::op") with overload `overload` ("" for default).
  void step(const std::string& name, const std::string& overload) {
    TORCH_CHECK(open_ == nullptr, "OpTape: step '", name, "' started before the previous one ended");
    const auto op = c10::Dispatcher::singleton().findSchema({name, overload});
    TORCH_CHECK(op.has_value(), "OpTape: no op ", name, overload.empty() ? "" : ".", overload);
    steps_.push_back(Step{*op, {}, {}, {}});
    open_ = &steps_.back();
  }

  // A constant argument: a tensor, number, string, None or list of numbers (lists of tensors come
  // through list()), as the boxed kernel reads it.
  void constant(c10::IValue value) {
    next_argument();
    open_->arguments.push_back({Argument::Kind::kConstant, std::move(value)});
  }

  // Constants Python cannot hand over untyped.
  void dtype(c10::ScalarType value) { constant(static_cast<int64_t>(value)); }
  void memory_format(c10::MemoryFormat value) { constant(static_cast<int64_t>(value)); }
  void layout(c10::Layout value) { constant(static_cast<int64_t>(value)); }
  void device(c10::Device value) { constant(value); }

  // An empty list argument (torch.flip(x, [])), typed as the schema declares it: Python cannot hand
  // over [] untyped.
  void empty_list() {
    const c10::Argument& schema_argument = next_argument();
    c10::TypePtr type = schema_argument.real_type();
    if (const auto optional = type->cast<c10::OptionalType>()) type = optional->getElementType();
    const auto list_type = type->cast<c10::ListType>();
    TORCH_CHECK(list_type != nullptr, "OpTape: argument '", schema_argument.name(), "' of ",
                open_->op.schema().name(), " is no list");
    open_->arguments.push_back({Argument::Kind::kConstant, c10::impl::GenericList(list_type->getElementType())});
  }

  // The argument's default value in the op's schema (the recording did not pass it).
  void default_value() {
    const c10::Argument& schema_argument = next_argument();
    TORCH_CHECK(schema_argument.default_value().has_value(), "OpTape: argument '", schema_argument.name(),
                "' of ", open_->op.schema().name(), " has no default");
    open_->arguments.push_back({Argument::Kind::kConstant, *schema_argument.default_value()});
  }

  void slot(int64_t slot) {
    next_argument();
    check_slot(slot);
    Argument argument{Argument::Kind::kSlot};
    argument.slot = slot;
    open_->arguments.push_back(std::move(argument));
  }

  // A Tensor[] / Tensor?[] argument: element i is slot element_slots[i] where that is >= 0, else
  // elements[i] (None or a tensor).
  void list(c10::IValue elements, std::vector<int64_t> element_slots) {
    const c10::Argument& schema_argument = next_argument();
    Argument argument{Argument::Kind::kList};
    c10::TypePtr type = schema_argument.real_type();
    if (const auto optional = type->cast<c10::OptionalType>()) type = optional->getElementType();
    TORCH_CHECK(is_tensor_list(type, &argument.optional_elements),
                "OpTape: argument '", schema_argument.name(), "' of ", open_->op.schema().name(),
                " is no list of tensors");
    const c10::List<c10::IValue> values = elements.toList();
    TORCH_CHECK(values.size() == element_slots.size(), "OpTape: ", values.size(), " elements but ",
                element_slots.size(), " element slots");
    for (const int64_t s : element_slots) {
      if (s >= 0) check_slot(s);
    }
    argument.elements.assign(values.begin(), values.end());
    argument.element_slots = std::move(element_slots);
    open_->arguments.push_back(std::move(argument));
  }

  // Ends the step: its returned tensors (lists flattened) go to new slots, numbered on from the
  // slots so far; returns the first.
  int64_t end_step(int64_t returned_tensors) {
    TORCH_CHECK(open_ != nullptr, "OpTape: end_step without a step");
    const size_t expected = open_->op.schema().arguments().size();
    TORCH_CHECK(open_->arguments.size() == expected, "OpTape: ", open_->op.schema().name(), " takes ", expected,
                " arguments, got ", open_->arguments.size());
    const int64_t first = slots_;
    for (int64_t i = 0; i < returned_tensors; ++i) open_->outputs.push_back(slots_++);
    open_ = nullptr;
    return first;
  }

  // The slots the replay returns; also frees each slot after the last step that reads it.
  void finish(std::vector<int64_t> outputs) {
    TORCH_CHECK(open_ == nullptr, "OpTape: finish inside a step");
    for (const int64_t s : outputs) check_slot(s);
    outputs_ = std::move(outputs);
    std::vector<int64_t> last_read(slots_, -1);
    for (size_t i = 0; i < steps_.size(); ++i) {
      for (const Argument& a : steps_[i].arguments) {
        if (a.kind == Argument::Kind::kSlot) last_read[a.slot] = static_cast<int64_t>(i);
        for (const int64_t s : a.element_slots) {
          if (s >= 0) last_read[s] = static_cast<int64_t>(i);
        }
      }
    }
    for (const int64_t s : outputs_) last_read[s] = -1;  // returned: kept to the end
    for (int64_t s = 0; s < slots_; ++s) {
      if (last_read[s] >= 0) steps_[last_read[s]].released.push_back(s);
    }
    finished_ = true;
  }

  // Tensors whose in-place changes PyTorch counts, with their versions now: run() refuses to replay
  // once one moved.
  void watch(std::vector<at::Tensor> tensors) {
    for (at::Tensor& t : tensors) {
      if (t.is_inference()) continue;  // no version counter: writes to it are not seen by eager either
      const int64_t version = t._version();
      watched_.emplace_back(std::move(t), version);
    }
  }

  // Whether every watched tensor is unchanged since the recording.
  bool current() const {
    for (const auto& [tensor, version] : watched_) {
      if (tensor._version() != version) return false;
    }
    return true;
  }

  // The outputs of the recorded ops run on `inputs`; none where a watched tensor changed (the
  // caller records again).
  std::optional<std::vector<at::Tensor>> run(std::vector<at::Tensor> inputs) const {
    TORCH_CHECK(finished_, "OpTape: run before finish");
    TORCH_CHECK(static_cast<int64_t>(inputs.size()) == inputs_, "OpTape: recorded with ", inputs_,
                " inputs, run with ", inputs.size());
    if (!current()) return std::nullopt;
    std::vector<c10::IValue> slots(slots_);
    for (int64_t i = 0; i < inputs_; ++i) slots[i] = std::move(inputs[i]);
    torch::jit::Stack stack;
    for (const Step& step : steps_) {
      stack.clear();
      stack.reserve(step.arguments.size());
      for (const Argument& a : step.arguments) {
        switch (a.kind) {
          case Argument::Kind::kConstant: stack.push_back(a.constant); break;
          case Argument::Kind::kSlot: stack.push_back(slots[a.slot]); break;
          case Argument::Kind::kList: {
            std::vector<c10::IValue> values = a.elements;
            for (size_t e = 0; e < values.size(); ++e) {
              if (a.element_slots[e] >= 0) values[e] = slots[a.element_slots[e]];
            }
            stack.push_back(tensor_list(values, a.optional_elements));
            break;
          }
        }
      }
      step.op.callBoxed(&stack);
      size_t next = 0;
      for (const c10::IValue& returned : stack) {
        if (returned.isTensor()) {
          store(step, next++, returned, slots);
        } else if (returned.isTensorList()) {
          for (const at::Tensor& t : returned.toTensorList()) store(step, next++, t, slots);
        }
      }
      TORCH_CHECK(next == step.outputs.size(), "OpTape: ", step.op.schema().name(), " returned ", next,
                  " tensors, the recording ", step.outputs.size());
      for (const int64_t s : step.released) slots[s] = c10::IValue();
    }
    std::vector<at::Tensor> outputs;
    outputs.reserve(outputs_.size());
    for (const int64_t s : outputs_) outputs.push_back(slots[s].toTensor());
    return outputs;
  }

  int64_t steps() const { return static_cast<int64_t>(steps_.size()); }

 private:
  const c10::Argument& next_argument() const {
    TORCH_CHECK(open_ != nullptr, "OpTape: an argument outside a step");
    const auto& arguments = open_->op.schema().arguments();
    TORCH_CHECK(open_->arguments.size() < arguments.size(), "OpTape: ", open_->op.schema().name(), " takes ",
                arguments.size(), " arguments, got more");
    return arguments[open_->arguments.size()];
  }

  void check_slot(int64_t slot) const {
    TORCH_CHECK(slot >= 0 && slot < slots_, "OpTape: slot ", slot, " is not filled before this step (",
                slots_, " slots so far)");
  }

  static void store(const Step& step, size_t i, c10::IValue value, std::vector<c10::IValue>& slots) {
    TORCH_CHECK(i < step.outputs.size(), "OpTape: ", step.op.schema().name(), " returned more tensors than the recording");
    slots[step.outputs[i]] = std::move(value);
  }

  const int64_t inputs_;
  int64_t slots_;
  std::vector<Step> steps_;
  Step* open_ = nullptr;  // the step being recorded (steps_ is not resized while one is open)
  std::vector<int64_t> outputs_;
  std::vector<std::pair<at::Tensor, int64_t>> watched_;
  bool finished_ = false;
};

}  // namespace
}  // namespace sparse_rt

TORCH_LIBRARY_FRAGMENT(sparse_rt, m) {
  using sparse_rt::OpTape;
  m.class_<OpTape>("OpTape")
      .def(torch::init<int64_t>())
      .def("step", &OpTape::step)
      .def("constant", &OpTape::constant)
      .def("dtype", &OpTape::dtype)
      .def("memory_format", &OpTape::memory_format)
      .def("layout", &OpTape::layout)
      .def("device", &OpTape::device)
      .def("empty_list", &OpTape::empty_list)
      .def("default_value", &OpTape::default_value)
      .def("slot", &OpTape::slot)
      .def("list", &OpTape::list)
      .def("end_step", &OpTape::end_step)
      .def("finish", &OpTape::finish)
      .def("watch", &OpTape::watch)
      .def("run", &OpTape::run)
      .def("steps", &OpTape::steps);
}
