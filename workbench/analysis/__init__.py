"""Reading runs back: side-by-side tables with statistics (`compare`), the interactive report
(`report`), and scores on datasets a model was not trained on (`crossdata`)."""
