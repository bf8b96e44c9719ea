//! OpenAI Chat Completions wire types, for translators that need the whole request.
